"""Time the relay's hand-off in-process: `relay_once` in a loop until the outbox is empty.

Run by bench/run.py (one or two at a time) against a pre-loaded outbox. Django starts before
the clock does, and every process waits for the same wall-clock start time, so the figure is
the hand-off rate, not interpreter start-up. `--variant` picks the app's own `relay_once`
(outbox.relay) or a private copy in bench/relay_variants.py that tries a speed-up.

    python bench/relay_drive.py --batch-size 500 --start-at 1700000000.0 --out result.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.prod")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--variant", default="app")
    parser.add_argument("--start-at", type=float, default=0.0, help="wall-clock time.time()")
    parser.add_argument("--profile", help="write the top functions of a cProfile run here")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    if args.variant == "app":
        from outbox.relay import relay_once
    else:
        import relay_variants

        relay_once = relay_variants.VARIANTS[args.variant]

    # No consumer runs during the measurement: the app's relay without backpressure.
    extra = {"queue_max": 0} if args.variant == "app" else {}
    connection.ensure_connection()
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    profiler = cProfile.Profile() if args.profile else None
    started = time.time()
    events = batches = tasks = 0
    if profiler:
        profiler.enable()
    while True:
        result = relay_once(batch_size=args.batch_size, **extra)
        if not result.events:
            break
        events += result.events
        tasks += result.tasks
        batches += 1
    if profiler:
        profiler.disable()
    ended = time.time()
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(18)
        stats.sort_stats("cumulative").print_stats(30)
        Path(args.profile).write_text(out.getvalue())
    Path(args.out).write_text(
        json.dumps(
            {
                "variant": args.variant,
                "batch_size": args.batch_size,
                "started": started,
                "ended": ended,
                "events": events,
                "tasks": tasks,
                "batches": batches,
            }
        )
    )


if __name__ == "__main__":
    main()
