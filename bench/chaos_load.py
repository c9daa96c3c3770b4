"""Steady load for the chaos suite: POST reviews over HTTP at a fixed rate, from its own process.

Every request carries a marker `[<marker>#<seq>]` at the start of its text, so a review whose
answer was lost (timeout, connection reset) can still be found in the database afterwards.
Each answer is written as one JSON line: seq, status (None when no answer arrived), review id,
latency, error and the start of the body for anything but a 2xx. Standard library only.

    python bench/chaos_load.py --url http://127.0.0.1:8000 --token T --restaurants 1,2,3 \
        --rate 8 --duration 30 --marker chaos-x-relay --out answers.jsonl

Stops after --duration seconds or on SIGTERM/SIGINT; answers still outstanding are awaited
for at most --timeout seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import signal
import threading
import time

TEXTS = [
    "Comida ótima, chegou quentinha e bem embalada.",
    "Great burger, arrived hot and the fries were crispy.",
    "Demorou mais de uma hora e a pizza chegou fria.",
    "The order was missing the drinks and the courier was rude.",
    "Preço justo, porção generosa, voltarei a pedir.",
    "Okay food, nothing special, packaging was fine.",
    "Veio o pedido errado e o suporte não respondeu.",
    "Delicious curry, a bit too salty this time.",
]
CRITICAL = [
    "Encontrei um cabelo na comida e passei mal depois.",
    "There was a cockroach in my salad, I felt sick all night.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--restaurants", required=True)
    parser.add_argument("--rate", type=float, required=True, help="Requests per second.")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--critical-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()

    host_port = args.url.removeprefix("http://").rstrip("/")
    assert host_port.startswith("127.0.0.1:"), "chaos traffic stays on 127.0.0.1"
    host, port = host_port.split(":")
    restaurants = [int(r) for r in args.restaurants.split(",")]
    rng = random.Random(args.seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tickets: queue.Queue = queue.Queue()
    out = open(args.out, "w", buffering=1)  # noqa: SIM115 - closed at the end
    out_lock = threading.Lock()

    def post(seq: int) -> None:
        text = rng.choice(CRITICAL) if rng.random() < args.critical_share else rng.choice(TEXTS)
        body = json.dumps(
            {
                "restaurant": rng.choice(restaurants),
                "rating": rng.randint(1, 5),
                "text": f"[{args.marker}#{seq}] {text}",
            }
        )
        record: dict = {"seq": seq, "status": None, "id": None, "sent": time.time()}
        conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
        started = time.monotonic()
        try:
            conn.request(
                "POST",
                "/api/reviews/",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Token {args.token}",
                },
            )
            response = conn.getresponse()
            data = response.read()
            record["status"] = response.status
            if 200 <= response.status < 300:
                record["id"] = json.loads(data).get("id")
            else:
                record["body"] = data[:300].decode(errors="replace")
                record["retry_after"] = response.getheader("Retry-After")
                record["content_type"] = response.getheader("Content-Type")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            record["error"] = f"{exc.__class__.__name__}: {exc}"[:200]
        finally:
            conn.close()
        record["ms"] = round((time.monotonic() - started) * 1000, 1)
        record["done"] = time.time()
        with out_lock:
            out.write(json.dumps(record) + "\n")

    def worker() -> None:
        while True:
            seq = tickets.get()
            if seq is None:
                return
            post(seq)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    started = time.monotonic()
    seq = 0
    # Open loop: tickets are issued on schedule whether or not answers come back.
    while not stop.is_set() and time.monotonic() - started < args.duration:
        seq += 1
        tickets.put(seq)
        next_at = started + seq / args.rate
        stop.wait(max(0.0, next_at - time.monotonic()))
    for _ in threads:
        tickets.put(None)
    deadline = time.monotonic() + args.timeout + 5
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    with out_lock:
        out.close()


if __name__ == "__main__":
    main()
