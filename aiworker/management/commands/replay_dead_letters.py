"""Replay dead letters through the outbox (the same path as new events)."""

from django.core.management.base import BaseCommand, CommandError

from aiworker.models import DeadLetter
from aiworker.services import dead_letters_replay


class Command(BaseCommand):
    help = "Replay open dead letters: --all, or the given ids. Safe to run twice at the same time."

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", type=int, metavar="ID")
        parser.add_argument("--all", action="store_true", help="Replay every open dead letter.")
        parser.add_argument("--dry-run", action="store_true", help="Show what would be replayed.")

    def handle(self, *args, ids: list[int], all: bool, dry_run: bool, **options):
        if all == bool(ids):
            raise CommandError("give either --all or one or more dead letter ids")
        result = dead_letters_replay(ids=None if all else ids, dry_run=dry_run)
        verb = "would replay" if dry_run else "replayed"
        letters = DeadLetter.objects.in_bulk(result.replayed)
        for pk in result.replayed:
            letter = letters[pk]
            self.stdout.write(
                f"{verb} #{pk}: review {letter.review_id} r{letter.revision} ({letter.error_class}: {letter.error_message[:80]})"
            )
        for pk in result.skipped:
            self.stderr.write(
                f"skipped #{pk}: not an open dead letter (unknown, already replayed or discarded, or being replayed)"
            )
        self.stdout.write(
            f"{verb} {len(result.replayed)} dead letter(s), skipped {len(result.skipped)}"
        )
        if ids and result.skipped and not result.replayed:
            raise CommandError("nothing replayed")
