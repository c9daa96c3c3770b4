"""Run qcluster under a watchdog (restart when stuck) that also enforces a stop timeout."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from aiworker.supervisor import Supervisor
from outbox.shutdown import stop_on_signals


class Command(BaseCommand):
    help = "Run and supervise one django-q2 cluster (what the Procfile's worker runs)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=4.0,
            help="Seconds between SIGTERM and SIGKILL (below honcho's 5 s).",
        )
        parser.add_argument(
            "--check-every", type=float, default=10.0, help="Watchdog interval, seconds."
        )

    def handle(self, *args, stop_timeout: float, check_every: float, **options):
        if stop_timeout <= 0 or check_every <= 0:
            raise CommandError("--stop-timeout and --check-every must be positive")
        should_stop = stop_on_signals()
        self.stdout.write(
            f"supervising qcluster ({settings.Q_WORKERS} workers); restart when a task waits "
            f"{settings.READY_QUEUE_MAX_WAIT_S:.0f}s with no progress"
        )
        supervisor = Supervisor(stop_timeout=stop_timeout, check_every=check_every)
        supervisor.run(should_stop)
        self.stdout.write(f"worker stopped ({supervisor.restarts} restarts)")
