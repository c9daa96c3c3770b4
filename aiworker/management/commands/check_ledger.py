"""Check that every accepted review ended exactly once: prints lost / duplicated / unexpected.

Exits non-zero when any count is not 0. The logic lives in aiworker.audit.
"""

import json
from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from aiworker.audit import ledger_check


def _since(value: str) -> datetime:
    """An ISO date/time (naive means UTC), or a duration back from now: 90s, 15m, 2h, 1d."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if value[:-1].isdigit() and value[-1:] in units:
        return timezone.now() - timedelta(**{units[value[-1]]: int(value[:-1])})
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise CommandError(
                f"--since: not an ISO date/time or a duration like 15m: {value!r}"
            ) from None
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Every accepted review ended exactly once (processed, dead-lettered or parked): "
        "prints lost / duplicated / unexpected counts; exits 1 if any is not 0."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", help="Only reviews created since (ISO, or 15m / 2h / 1d).")
        parser.add_argument("--json", dest="as_json", action="store_true", help="Machine-readable.")
        parser.add_argument(
            "--allow-in-flight",
            action="store_true",
            help="Reviews still on their way (event ready or handed off) are not findings.",
        )
        parser.add_argument(
            "--max-calls-per-review",
            type=int,
            help="Fixed limit of paid provider calls per review (default: from its attempts).",
        )

    def handle(self, *args, since, as_json, allow_in_flight, max_calls_per_review, **options):
        report = ledger_check(
            since=_since(since) if since else None,
            allow_in_flight=allow_in_flight,
            max_calls_per_review=max_calls_per_review,
        )
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.stdout.write(report.summary())
            for finding in report.findings[:20]:
                where = (
                    f"review {finding.review_id}"
                    if finding.review_id
                    else f"event {finding.event_id}"
                )
                self.stdout.write(
                    f"  {finding.category:<10} {finding.kind:<28} {where}: {finding.detail}"
                )
            if len(report.findings) > 20:
                self.stdout.write(f"  … and {len(report.findings) - 20} more (--json shows 50)")
        if not report.ok:
            raise CommandError(
                f"ledger check failed: lost={report.lost} duplicated={report.duplicated} "
                f"unexpected={report.unexpected}"
            )
