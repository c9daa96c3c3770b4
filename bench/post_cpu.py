"""CPU and database round trips of one `POST /api/reviews/`, in-process, for one or more
checkouts side by side (e.g. before and after a change of the write path).

Each tree runs in its own process with its own database (migrated here first), through
Django's request handler with settings.prod (no HTTP, no other load). The trees alternate,
run by run, so drift of a noisy machine hits both; the table gives medians and [min–max].

    git worktree add /tmp/before <commit>
    python bench/post_cpu.py --runs 5 \
        --tree before=/tmp/before@postgres://postgres@127.0.0.1:5432/reviews_post_a \
        --tree after=.@postgres://postgres@127.0.0.1:5432/reviews_post_b

Databases are created if missing. SECRET_KEY defaults to a throwaway value for the run.
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


def child(requests: int) -> dict:
    import django

    django.setup()
    from django.db import connection
    from inproc import review_poster

    post = review_poster("post-cpu")

    for i in range(200):  # warm: imports, caches, the connection
        post(i)
    statements: list[str] = []

    def count(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        post(0)
    walls = []
    cpu_started = time.process_time()
    for i in range(requests):
        t = time.perf_counter()
        post(i)
        walls.append((time.perf_counter() - t) * 1000)
    cpu_ms = (time.process_time() - cpu_started) * 1000 / requests
    walls.sort()
    return {
        "cpu_ms_per_post": cpu_ms,
        "wall_p50_ms": walls[len(walls) // 2],
        # Statements Django's cursors sent; BEGIN, COMMIT and conn_health_checks' SELECT 1
        # are further round trips that psycopg sends itself.
        "statements": len(statements),
    }


def parse_tree(spec: str) -> tuple[str, Path, str]:
    try:
        name, rest = spec.split("=", 1)
        path, url = rest.split("@", 1)
    except ValueError:
        raise SystemExit(f"--tree wants NAME=PATH@DATABASE_URL, got {spec!r}") from None
    return name, Path(path).resolve(), url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH@DATABASE_URL")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.requests)))
        return
    if not args.tree:
        parser.error("give at least one --tree NAME=PATH@DATABASE_URL")
    trees = [parse_tree(spec) for spec in args.tree]
    base = {
        "SECRET_KEY": "post-cpu-" + "x" * 60,
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.prod",
        "SECURE_SSL_REDIRECT": "false",
        "SECURE_HSTS_SECONDS": "0",
        "API_REVIEW_RATE": "off",
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
    }
    for name, path, url in trees:
        env = {**base, "DATABASE_URL": url}
        db = url.rsplit("/", 1)[1]
        # Fails harmlessly when the database exists; migrate below reports a real problem.
        maintenance = url.rsplit("/", 1)[0] + "/postgres"
        subprocess.run(["createdb", f"--maintenance-db={maintenance}", db], capture_output=True)
        for command in (["migrate", "-v0"], ["createcachetable"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=path, env=env, check=True)
        print(f"{name}: {path} migrated ({db})", file=sys.stderr)
    results: dict[str, list[dict]] = {name: [] for name, _, _ in trees}
    for run in range(args.runs):
        for name, path, url in trees:
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child",
                 "--requests", str(args.requests)],
                env={**base, "DATABASE_URL": url, "PYTHONPATH": str(path)},
                cwd=path, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1}/{args.runs} {name}: {results[name][-1]}", file=sys.stderr)
    print(f"{args.requests} POSTs per run, median [min–max] of {args.runs} runs\n")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for key in results[trees[0][0]][0]:
        cells = []
        for runs in results.values():
            values = [r[key] for r in runs]
            cells.append(
                f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"
                if key != "statements"
                else f"{statistics.median(values):.0f}"
            )
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
