"""Pipeline drain probe: the CPU that the relay, the queue and the workers spend per analysed
review, without the web tier in the way.

Each measurement preloads N pending reviews with their events, starts the fake LLM at 0 ms,
the relay and a qcluster (bench/run.py's harness, settings.prod), and times the drain until
every review is analysed. Then it hands every (now finished) event off again, which measures
what a task costs that finds its work already done.

    python bench/drain_probe.py [--reviews 3000] [--reps 3] [--against DIR]

--against DIR also measures another checkout of this project (e.g. `git worktree add
/tmp/before <commit>`), alternating with this one in the same run, and prints medians
[min–max] of both side by side with their ratio. Needs the benchmark database (make bench's
BENCH_DATABASE_URL, or DATABASE_URL) and nothing else running on it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def machine_busy() -> tuple[int, int]:
    fields = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    return sum(fields) - fields[3] - fields[4], sum(fields)


def timed(bench, start, done, what: str) -> tuple[float, float, dict[str, float]]:
    """Run `start`, wait for `done`: seconds, machine CPU seconds, CPU seconds per kind."""
    from stack import wait_for  # bench/stack.py of the checkout being measured

    sampler = bench.sampler(interval=0.5, snapshot=False)
    sampler.start()
    busy0, t0 = machine_busy(), time.monotonic()
    start()
    wait_for(done, 900, what)
    seconds, busy1 = time.monotonic() - t0, machine_busy()
    sampler.stop()
    return seconds, (busy1[0] - busy0[0]) / os.sysconf("SC_CLK_TCK"), sampler.cpu()


def measure_one(root: Path, reviews: int) -> dict:
    """One measurement with the harness and the app of `root` (run in its own process)."""
    sys.path[:0] = [str(root / "bench"), str(root)]
    import run as harness  # the checkout's own harness, chosen at run time

    args = argparse.Namespace(
        quick=True, only=None, out=None, q_workers=harness.Q_WORKERS, report_only=False
    )
    bench = harness.Bench(args)
    bench.exclusive()
    bench.setup_django()
    bench.migrate()
    bench.fixtures()
    done_sql = "SELECT count(*) FROM reviews_review WHERE analysis_status = 'done'"
    out: dict = {}
    try:
        bench.start_fake()
        bench.fake(latency_ms=0)
        bench.start_relay()
        bench.start_qcluster()
        bench.reset_data()
        time.sleep(2)  # the cluster settles

        seconds, cpu_s, by_kind = timed(
            bench,
            lambda: bench.preload_reviews(reviews),
            lambda: bench.scalar(done_sql) >= reviews,
            "the drain",
        )
        out["drain"] = {
            "seconds": seconds,
            "reviews_per_s": reviews / seconds,
            "machine_cpu_ms_per_review": cpu_s * 1000 / reviews,
            "cpu_ms_per_review": {k: v * 1000 / reviews for k, v in by_kind.items()},
            "calls": bench.scalar("SELECT count(*) FROM aiworker_llmcall"),
            "handoffs": bench.scalar("SELECT sum(handoffs) FROM outbox_outboxevent"),
        }
        seconds, cpu_s, _ = timed(
            bench,
            lambda: bench.sql(
                "UPDATE outbox_outboxevent SET published_at = NULL, available_at = now()",
                fetch=False,
            ),
            lambda: bench.scalar("SELECT count(*) FROM django_q_ormq") == 0
            and bench.scalar("SELECT count(*) FROM outbox_outboxevent WHERE published_at IS NULL")
            == 0,
            "the redelivered events",
        )
        out["redeliver"] = {
            "seconds": seconds,
            "events_per_s": reviews / seconds,
            "machine_cpu_ms_per_event": cpu_s * 1000 / reviews,
        }
    finally:
        bench.procs.stop_all()
    return out


def fmt(values: list[float], digits: int = 1) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one.resolve(), args.reviews)))
        return 0

    roots = {"this checkout": HERE}
    if args.against:
        if not (args.against / "manage.py").exists():
            parser.error(f"--against: {args.against} is not a checkout of this project")
        roots = {f"{args.against}": args.against.resolve(), **roots}
    results: dict[str, list[dict]] = {name: [] for name in roots}
    for rep in range(1, args.reps + 1):
        for name, root in roots.items():
            print(f"rep {rep}/{args.reps}: {name} …", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--one", str(root), "--reviews", str(args.reviews)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                return 1
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(result)
            d = result["drain"]
            print(
                f"  {d['reviews_per_s']:.0f} reviews/s, {d['machine_cpu_ms_per_review']:.1f} ms "
                f"CPU/review; redelivered: {result['redeliver']['machine_cpu_ms_per_event']:.2f}"
                " ms CPU/event",
                flush=True,
            )

    kinds = sorted(
        {k for runs in results.values() for r in runs for k in r["drain"]["cpu_ms_per_review"]}
    )
    names = list(roots)
    rows = [
        ("drain, reviews/s", lambda r: r["drain"]["reviews_per_s"], 0),
        ("machine CPU ms per review", lambda r: r["drain"]["machine_cpu_ms_per_review"], 2),
        *[
            (f"  {k} ms/review", lambda r, k=k: r["drain"]["cpu_ms_per_review"].get(k, 0.0), 2)
            for k in kinds
        ],
        ("event hand-offs per review", lambda r: r["drain"]["handoffs"] / args.reviews, 2),
        ("reviews per provider call", lambda r: args.reviews / max(r["drain"]["calls"], 1), 1),
        (
            "redelivered event, machine CPU ms",
            lambda r: r["redeliver"]["machine_cpu_ms_per_event"],
            2,
        ),
    ]
    print(f"\n{args.reviews} reviews, fake LLM at 0 ms, {args.reps} runs each, medians [min–max]\n")
    header = "| | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |")
    print(header)
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, get, digits in rows:
        cells = [fmt([get(r) for r in results[n]], digits) for n in names]
        ratio = ""
        if len(names) == 2:
            a = statistics.median(get(r) for r in results[names[0]])
            b = statistics.median(get(r) for r in results[names[1]])
            ratio = f" | {b / a:.2f}×" if a else " | –"
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
