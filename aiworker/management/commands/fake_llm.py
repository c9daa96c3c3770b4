"""Run the fake OpenAI-compatible LLM server: parse options, serve, stop on SIGTERM/SIGINT.

The server itself lives in aiworker.fake_llm; faults can be changed later with
`POST /_control` (or aiworker.fake_llm.fake_control) without a restart.
"""

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aiworker.fake_llm import MODES, STATUSES, check_faults, start_in_thread


class Command(BaseCommand):
    help = "Serve a fake OpenAI-compatible API (/v1/chat/completions) with injectable faults."
    # It touches neither the database nor the URLconf: start fast, even next to a broken app.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001, help="0 picks a free port.")
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--jitter-ms", type=float, default=0)
        parser.add_argument("--error-rate", type=float, default=0, help="0..1: share of 500s.")
        parser.add_argument(
            "--status", type=int, help=f"Fail every call with this status: {STATUSES}."
        )
        parser.add_argument("--retry-after", type=float, default=1, help="Seconds, for 429.")
        parser.add_argument("--quota-exhausted", action="store_true", help="429 as no quota.")
        parser.add_argument("--hang-s", type=float, default=0, help="Sleep before answering.")
        parser.add_argument("--fail-first-n", type=int, default=0, help="Then heal.")
        parser.add_argument("--mode", default="ok", help=f"One of: {', '.join(MODES)}.")
        parser.add_argument("--force", action="store_true", help="Start even with DEBUG=False.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                "refusing to start: DEBUG is False, so this may be production, and the fake "
                "answers canned analyses instead of a real model; pass --force to start anyway"
            )
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"--port must be between 0 and 65535, got {options['port']}")
        faults = self._faults(options)
        try:
            handle = start_in_thread(host=options["host"], port=options["port"], **faults)
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from None
        self.stdout.write(f"fake LLM listening; use OPENAI_BASE_URL={handle.url}")
        self.stdout.flush()  # a parent process reads this line to learn the port

        stopping = threading.Event()

        def stop(signum: int, frame: object) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # A timed wait lets the main thread run the signal handlers promptly.
        while not stopping.wait(0.5):
            pass
        handle.stop()
        self.stdout.write("fake LLM stopped")

    def _faults(self, options: dict[str, Any]) -> dict[str, Any]:
        faults = {
            "latency_ms": options["latency_ms"],
            "jitter_ms": options["jitter_ms"],
            "error_rate": options["error_rate"],
            "status": options["status"],
            "retry_after_s": options["retry_after"],
            "quota_exhausted": options["quota_exhausted"],
            "hang_s": options["hang_s"],
            "fail_first_n": options["fail_first_n"],
            "mode": options["mode"],
        }
        try:
            return check_faults(faults)
        except ValueError as exc:
            # The server's field names, spelled as this command's options.
            name = str(exc).split(" ", 1)[0]
            flag = {"retry_after_s": "retry-after"}.get(name, name.replace("_", "-"))
            raise CommandError(f"--{flag}{str(exc)[len(name) :]}") from None
