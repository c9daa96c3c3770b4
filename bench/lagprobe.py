"""Commit-to-enqueued lag of the running relay at a steady event rate (issue 3).

A producer thread commits one outbox event per transaction at a fixed rate, the way
`event_publish` does (INSERT, whose trigger NOTIFYs at commit), and notes when each COMMIT
returned. A statement-level trigger that bench/run.py installs for the measurement only
(`bench_handoff`) records, inside the relay's own transaction, which events it marked
published, and NOTIFYs `bench_handoff` with the transaction id: Postgres delivers that when
the relay's transaction commits, i.e. when the tasks become visible in the queue. A listener
thread notes when each notification arrives. Lag = arrival - commit, per event, on one clock.

    python bench/lagprobe.py --dsn postgres://... --rate 500 --duration 30 --out lag.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb


def produce(dsn: str, rate: float, duration: float, commits: dict, stop: threading.Event):
    conn = psycopg.connect(dsn)
    conn.prepare_threshold = 0
    total = round(rate * duration)
    start = time.perf_counter() + 0.2
    late = 0
    try:
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                late += 1
            event_id = uuid.uuid4()
            with conn.transaction():
                conn.execute(
                    "INSERT INTO outbox_outboxevent (id, topic, key, payload, created_at,"
                    " available_at, published_at, handoffs, finished_tasks, finished_at,"
                    " parked_reason) VALUES (%s, 'reviews.created', %s, %s, now(), now(), NULL,"
                    " 0, '[]', NULL, '')",
                    [event_id, f"lag:{i}", Jsonb({"review_id": 0, "revision": 1, "lag": i})],
                )
            commits[str(event_id)] = time.perf_counter()
    finally:
        conn.close()
        stop.set()
    return late


def listen(dsn: str, arrivals: dict, ready: threading.Event, stop: threading.Event) -> None:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("LISTEN bench_handoff")
    ready.set()
    idle_after_stop = 0.0
    while True:
        got = False
        for note in conn.notifies(timeout=0.2):
            arrivals.setdefault(int(note.payload), time.perf_counter())
            got = True
        if stop.is_set() and not got:
            idle_after_stop += 0.2
            if idle_after_stop > 1.0:
                break
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    commits: dict[str, float] = {}
    arrivals: dict[int, float] = {}
    ready, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen, args=(args.dsn, arrivals, ready, stop))
    listener.start()
    ready.wait(10)
    began = time.perf_counter()
    late = produce(args.dsn, args.rate, args.duration, commits, stop)
    sent_s = time.perf_counter() - began
    listener.join(timeout=30)
    with psycopg.connect(args.dsn) as conn:
        rows = conn.execute("SELECT event_id::text, txid FROM bench_handoff").fetchall()
    lags = []
    missing = 0
    for event_id, txid in rows:
        if event_id in commits and txid in arrivals:
            lags.append((arrivals[txid] - commits[event_id]) * 1000)
        elif event_id in commits:
            missing += 1
    with open(args.out, "w") as f:
        json.dump(
            {
                "rate": args.rate,
                "duration_s": args.duration,
                "sent": len(commits),
                "achieved_rate": round(len(commits) / sent_s, 1),
                "late_sends": late,
                "matched": len(lags),
                "unmatched": len(commits) - len(lags),
                "no_notification": missing,
                "batches": len(arrivals),
                "lags_ms": sorted(round(v, 3) for v in lags),
            },
            f,
        )


if __name__ == "__main__":
    main()
