"""Delete finished outbox events older than the retention period, in small batches."""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from outbox.relay import prune_once


class Command(BaseCommand):
    help = "Prune finished outbox events older than --hours (default OUTBOX_RETENTION_HOURS)."

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=int, default=settings.OUTBOX_RETENTION_HOURS)
        parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_PRUNE_BATCH)

    def handle(self, *args, hours: int, batch_size: int, **options):
        if hours < 0 or batch_size < 1:
            raise CommandError("--hours must be >= 0 and --batch-size >= 1")
        total = 0
        while deleted := prune_once(older_than=timedelta(hours=hours), batch_size=batch_size):
            total += deleted
            self.stdout.write(f"  pruned {total} so far", ending="\r")
        self.stdout.write(f"pruned {total} finished events older than {hours} h")
