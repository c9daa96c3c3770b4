"""Garbage-collector pauses in a web process, with and without settings/wsgi.py's gc.freeze().

POSTs reviews in-process through Django's request handler (no HTTP, no other load) and
records each request's wall time and every collection's pause. Each mode runs in its own
process, the modes alternate, and the table gives medians over the runs. The database must
be migrated (e.g. the benchmark database after `make bench`); the probe adds a user, a token,
restaurants and its reviews to it.

    python bench/gc_probe.py --requests 3000 --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, requests: int) -> dict:
    sys.path.insert(0, str(ROOT))
    if mode == "wsgi (gc.freeze)":
        import settings.wsgi  # noqa: F401 - what gunicorn loads: imports views, freezes
    else:
        import django

        django.setup()
    import gc

    from inproc import review_poster

    post = review_poster("gc-probe")

    for i in range(200):  # warm: caches, prepared paths, the connection
        post(i)
    pauses: list[tuple[int, float]] = []
    began = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - began[0]) * 1000))

    gc.callbacks.append(on_gc)
    latencies = []
    for i in range(requests):
        t = time.perf_counter()
        post(i)
        latencies.append((time.perf_counter() - t) * 1000)
    gc.callbacks.remove(on_gc)
    latencies.sort()
    full = [ms for generation, ms in pauses if generation == 2]
    return {
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "max_ms": latencies[-1],
        "collections": len(pauses),
        "full_collections": len(full),
        "longest_full_ms": max(full, default=0.0),
        "longest_young_ms": max((ms for g, ms in pauses if g < 2), default=0.0),
        "tracked_objects": len(gc.get_objects()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.requests)))
        return
    env = {"DJANGO_SETTINGS_MODULE": "settings.prod", **os.environ}
    modes = ["django.setup() only", "wsgi (gc.freeze)"]
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for run in range(args.runs):
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--requests", str(args.requests)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1}/{args.runs} {mode}: {results[mode][-1]}", file=sys.stderr)
    keys = list(results[modes[0]][0])
    print(f"{args.requests} POSTs per run, medians of {args.runs} runs\n")
    print("| | " + " | ".join(modes) + " |")
    print("|---|" + "---|" * len(modes))
    for key in keys:
        medians = [statistics.median(r[key] for r in results[m]) for m in modes]
        cells = [
            f"{v:,.0f}" if key.endswith(("collections", "objects")) else f"{v:,.1f}"
            for v in medians
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
