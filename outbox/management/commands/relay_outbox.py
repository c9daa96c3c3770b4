"""Run the outbox relay: parse options, loop, stop cleanly on SIGTERM/SIGINT."""

import logging
import os
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from outbox import relay
from outbox.shutdown import stop_on_signals


class Command(BaseCommand):
    help = "Hand committed outbox events to the django-q2 queue (LISTEN/NOTIFY with polling)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Hand off what is there and exit.")
        parser.add_argument("--batch-size", type=int, default=settings.RELAY_BATCH_SIZE)
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=settings.RELAY_POLL_INTERVAL_S,
            help="Seconds between polls when no NOTIFY arrives.",
        )
        parser.add_argument("--no-listen", action="store_true", help="Poll only, no LISTEN.")

    def handle(
        self, *args, once: bool, batch_size: int, poll_interval: float, no_listen: bool, **options
    ):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if poll_interval <= 0:
            raise CommandError("--poll-interval must be positive")
        if options["verbosity"] >= 1:
            logging.getLogger("outbox").setLevel(logging.INFO)
        if once:
            total = 0
            while (result := relay.relay_once(batch_size=batch_size)).events:
                total += result.events
            self.stdout.write(f"handed off {total} events")
            return

        should_stop = stop_on_signals()
        self.stdout.write(
            f"relay running (batch {batch_size}, poll {poll_interval}s); Ctrl-C stops"
        )
        relay.run(
            batch_size=batch_size,
            poll_interval=poll_interval,
            should_stop=should_stop,
            listen=not no_listen,
            heartbeat_name=f"relay:{socket.gethostname()}:{os.getpid()}",
        )
        self.stdout.write("relay stopped")
