"""Open-loop load generator: POST /api/reviews/ at a fixed arrival rate, to 127.0.0.1 only.

Requests are scheduled at start + i/rate whatever the server does (a closed-loop tool waits
for answers and so hides queueing delay); each latency is measured from the request's
*scheduled* time to the end of its answer, so a server (or generator) that falls behind shows
up in the figures instead of being hidden. Keep-alive connections are reused; a new one is
opened whenever none is idle, up to --max-conns. Standard library only.

    python bench/loadgen.py --port 8000 --token KEY --restaurants 1,2,3 --rate 20 \
        --duration 10 --out result.json

Prints progress to stderr once a second; writes a JSON summary with every latency to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

TEXTS = [
    "Great burger, fries were a bit cold but the sauce is amazing.",
    "It was okay. Nothing special, delivery on time.",
    "Comida maravilhosa e entrega rápida, chegou tudo quentinho.",
    "O pedido atrasou mais de uma hora e a batata chegou murcha.",
    "Loved the pizza, crispy crust and generous toppings. Will order again!",
    "The driver was very polite but the soup had spilled in the bag.",
    "Muito bom, mas a porção poderia ser maior pelo preço.",
    "Cold food, late delivery and the order was missing a drink.",
    "Best sushi in town, fresh fish and beautiful presentation.",
    "Atendimento excelente, recomendo o risoto de cogumelos.",
    "The salad was fine, the dressing too salty for my taste.",
    "Entrega rápida, hambúrguer suculento, batata crocante. Nota dez!",
]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def build_requests(
    *, host: str, port: int, token: str, restaurants: list[int], count: int
) -> list[bytes]:
    rng = random.Random(1234)
    out = []
    for n in range(count):
        body = json.dumps(
            {
                "restaurant": rng.choice(restaurants),
                "rating": rng.randint(1, 5),
                "text": f"{rng.choice(TEXTS)} #{n}",
                "author_name": "bench",
            },
            ensure_ascii=False,
        ).encode()
        head = (
            f"POST /api/reviews/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Token {token}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


class Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, 0

    def close(self) -> None:
        self.writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def run(args: argparse.Namespace) -> dict:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loadgen only sends traffic to this machine's loopback address")
    total = max(1, round(args.rate * args.duration))
    requests = build_requests(
        host=args.host,
        port=args.port,
        token=args.token,
        restaurants=[int(r) for r in args.restaurants.split(",")],
        count=min(total, 20000),
    )
    loop = asyncio.get_running_loop()
    idle: list[Conn] = []
    open_conns = 0
    conn_slots = asyncio.Semaphore(args.max_conns)
    latencies: list[float] = []  # ms, successful (2xx) answers
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    window: list[float] = []
    send_lag_max = 0.0
    inflight = 0

    async def connect() -> Conn:
        nonlocal open_conns
        reader, writer = await asyncio.open_connection(args.host, args.port)
        open_conns += 1
        return Conn(reader, writer)

    async def one(index: int, scheduled: float) -> None:
        nonlocal inflight, open_conns, send_lag_max
        inflight += 1
        payload = requests[index % len(requests)]
        async with conn_slots:
            send_lag_max = max(send_lag_max, loop.time() - scheduled)
            conn = idle.pop() if idle else None
            outcome = "error"
            for attempt in (1, 2):
                fresh = conn is None
                try:
                    if conn is None:
                        conn = await connect()
                    conn.writer.write(payload)
                    remaining = args.timeout - (loop.time() - scheduled)
                    status, keep = await asyncio.wait_for(
                        read_response(conn.reader), max(remaining, 0.001)
                    )
                except TimeoutError:
                    outcome = "timeout"
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    outcome = type(exc).__name__
                    if not fresh and attempt == 1:
                        # The server closed an idle keep-alive connection: retry once, fresh.
                        conn.close()
                        open_conns -= 1
                        conn = None
                        continue
                else:
                    elapsed_ms = (loop.time() - scheduled) * 1000
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if 200 <= status < 300:
                        latencies.append(elapsed_ms)
                        window.append(elapsed_ms)
                    else:
                        errors[f"http {status}"] = errors.get(f"http {status}", 0) + 1
                    if keep:
                        idle.append(conn)
                    else:
                        conn.close()
                        open_conns -= 1
                    conn = None
                    outcome = ""
                break
            if outcome:
                errors[outcome] = errors.get(outcome, 0) + 1
                if conn is not None:
                    conn.close()
                    open_conns -= 1
        inflight -= 1

    tasks: set[asyncio.Task] = set()
    start = loop.time() + 0.05
    next_report = start + 1
    sent = 0

    def report(final: bool = False) -> None:
        window.sort()
        done = len(latencies) + sum(errors.values())
        print(
            f"  [{args.label}] t={loop.time() - start:5.1f}s sent={sent} done={done} "
            f"in-flight={inflight} conns={open_conns} "
            f"p99(last 1s)={percentile(window, 99):.1f}ms errors={sum(errors.values())}"
            + (" (draining)" if final else ""),
            file=sys.stderr,
            flush=True,
        )
        window.clear()

    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
        if loop.time() >= next_report and args.progress:
            report()
            next_report += 1
    send_end = loop.time()
    deadline = send_end + args.timeout + 1
    while tasks and loop.time() < deadline:
        await asyncio.wait(set(tasks), timeout=1)
        if args.progress:
            report(final=True)
    for task in tasks:  # cannot happen with per-request timeouts; kept as a bound
        task.cancel()
    wall = loop.time() - start
    for conn in idle:
        conn.close()
    latencies.sort()
    return {
        "label": args.label,
        "rate": args.rate,
        "duration_s": args.duration,
        "sent": total,
        "ok": len(latencies),
        "errors": errors,
        "error_count": sum(errors.values()),
        "statuses": statuses,
        "achieved_rate": round(total / max(send_end - start, 1e-9), 1),
        "wall_s": round(wall, 2),
        "max_send_lag_ms": round(send_lag_max * 1000, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "latencies_ms": [round(v, 2) for v in latencies],
        "started_at": time.time() - wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--restaurants", required=True, help="comma-separated ids")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of sending")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--max-conns", type=int, default=2000)
    parser.add_argument("--label", default="load")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        raise SystemExit("--rate and --duration must be positive")
    result = asyncio.run(run(args))
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(
        f"  [{args.label}] {result['sent']} sent at {result['achieved_rate']}/s: "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms, "
        f"{result['error_count']} errors {result['errors'] or ''}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    main()
