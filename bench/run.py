"""`make bench`: the benchmarks of issues 7, 3 and 4, measured on this machine in one run.

Starts the production-like stack itself (gunicorn with settings.prod and DEBUG=False, the
outbox relay, a django-q2 cluster, the fake OpenAI-compatible LLM as the provider) against
its own database, drives it with real load-generator processes (an open-loop generator for
latency at a fixed arrival rate, wrk for closed-loop maximum throughput, pgbench for the
database's own ceiling), reads the timings the pipeline records in the database, and writes
docs/BENCHMARKS.md and docs/benchmarks.json. Every figure comes from the run.

    python bench/run.py [--quick] [--only NAME[,NAME]] [--wait-idle SECONDS]

Scenarios: sync_async, ai_down, max_rate, e2e, memory, workers, relay (see SCENARIOS).
A quick run (--quick) writes bench/.out/BENCHMARKS-quick.md (and .json) instead of docs/,
so a check during development never replaces the figures of a full run; `--out DIR`
chooses another place. A partial run (--only) replaces only its own sections.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import stack
from stack import PY, ROOT, Procs, descendants, free_port, http_ok, memory_kib, wait_for
from stats import dist, fmt, fmt_spread, spread, table, verdict

BENCH = ROOT / "bench"
LOGS = BENCH / ".logs"
QUICK_OUT = BENCH / ".out"
DOCS = ROOT / "docs"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/reviews_bench"
BENCH_LOCK_KEY = 0x42E4C401  # advisory lock held by a running benchmark
HAND_BEGIN = "<!-- hand-written:begin (kept by bench/run.py) -->"
HAND_END = "<!-- hand-written:end -->"

SCENARIOS = ["sync_async", "ai_down", "max_rate", "e2e", "memory", "workers", "relay"]
ALIASES = {
    "1": "sync_async",
    "sync": "sync_async",
    "2": "ai_down",
    "down": "ai_down",
    "3": "max_rate",
    "max": "max_rate",
    "4": "e2e",
    "5": "memory",
    "mem": "memory",
    "6": "relay",
    "7": "workers",
    "worker": "workers",
}
TITLES = {
    "sync_async": "1. POST /api/reviews/: AI inline (sync) vs event-driven (async)",
    "ai_down": "2. AI provider down",
    "max_rate": "3. Maximum accepted rate",
    "e2e": "4. End to end: commit → analysis saved",
    "memory": "5. Memory",
    "workers": "7. Worker throughput and batching (issue 4)",
    "relay": "6. Outbox relay hand-off (issue 3)",
}
# Report order follows the issue numbering; run order minimises process restarts.
REPORT_ORDER = ["sync_async", "ai_down", "max_rate", "e2e", "memory", "relay", "workers"]

# The web tier. 2 cores: 3 gthread workers x 4 threads keeps both cores busy while some
# threads wait on PostgreSQL. The sync anti-pattern holds a thread for the whole provider
# call, so it needs rate x call time threads in flight: 20 req/s x ~2.2 s = ~44 (+ margin).
WEB = {"workers": 3, "threads": 4}
SYNC_WEB = {"workers": 2, "threads": 28}
Q_WORKERS = 16  # 1 s provider calls: throughput comes from concurrent calls (issue 4 §8)
RESTAURANTS = 10
SLO_MS = 50.0

PARAMS = {
    "full": {
        "sync_async": {
            "rate": 20,
            "runs": 3,
            "run_s": 20,
            "timeout": 30,
            "default_run_s": 15,
            "default_timeout": 20,
            "nice_runs": 2,
        },
        "ai_down": {"rate": 20, "runs": 2, "run_s": 8, "sync_run_s": 5, "hang_timeout": 25},
        "max_rate": {
            "wrk_conns": [8, 16, 32],
            "wrk_s": 6,
            "reps": 3,
            "step_s": 5,
            "max_steps": 8,
            "pgbench_clients": [4, 8, 16],
            "pgbench_s": 6,
        },
        "e2e": {"rate": 100, "run_s": 60, "latencies": [0, 1000], "drain_s": 90},
        "memory": {"events": 100_000, "max_s": 420},
        "workers": {"preload": 4000, "window_s": 20, "batches": [1, 10]},
        "relay": {
            "events": 100_000,
            "reps": 3,
            "variants": ["django_signer", "list_copy", "before"],
            "batch_2000": True,
            "profile": True,
            "lag_rate": 500,
            "lag_s": 30,
        },
    },
    "quick": {
        "sync_async": {
            "rate": 20,
            "runs": 1,
            "run_s": 4,
            "timeout": 8,
            "default_run_s": 0,
            "default_timeout": 3,
            "nice_runs": 0,
        },
        "ai_down": {"rate": 20, "runs": 1, "run_s": 1.5, "sync_run_s": 1.0, "hang_timeout": 3},
        "max_rate": {
            "wrk_conns": [16],
            "wrk_s": 3,
            "reps": 1,
            "step_s": 2,
            "max_steps": 2,
            "pgbench_clients": [8],
            "pgbench_s": 2,
        },
        "e2e": {"rate": 100, "run_s": 3, "latencies": [0, 1000], "drain_s": 6},
        "memory": {"events": 600, "max_s": 30},
        "workers": {"preload": 600, "window_s": 2.0, "batches": [1, 10]},
        "relay": {
            "events": 10_000,
            "reps": 1,
            "variants": ["before"],
            "batch_2000": False,
            "profile": False,
            "lag_rate": 500,
            "lag_s": 3,
        },
    },
}


def say(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.mode = "quick" if args.quick else "full"
        self.p = PARAMS[self.mode]
        self.db_url = os.environ.get("DATABASE_URL") or DEFAULT_DB
        self.procs = Procs(LOGS)
        self.ports = {name: free_port() for name in ("fake", "web", "web_sync", "web_sync_dflt")}
        self.fake_url = f"http://127.0.0.1:{self.ports['fake']}/v1"
        self.q_workers = args.q_workers
        self.relay_queue_max = args.relay_queue_max
        self.worker_nice = args.worker_nice
        self.env = self._env()
        self.results: dict = {}
        self.commands: dict[str, str] = {}
        self.token = ""
        self.restaurants: list[int] = []
        self.sql_conn = None
        self.stage = ""
        self.qcluster_batch = 0
        self.qcluster_nice = 0
        self.qcluster_workers = self.q_workers
        self.web_config: dict[str, tuple[str, int, int]] = {}

    # ------------------------------------------------------------------ environment

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("LLM_", "Q_", "RELAY_", "OPENAI_", "REVIEWS_")):
                env.pop(name)  # the benchmark decides these; a developer's shell must not
        env.update(
            DJANGO_SETTINGS_MODULE="settings.prod",
            DATABASE_URL=self.db_url,
            SECRET_KEY="bench-" + secrets.token_urlsafe(48),
            DEBUG="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECURE_SSL_REDIRECT="false",
            SECURE_HSTS_SECONDS="0",
            API_REVIEW_RATE="off",
            ANALYZER="openai",
            OPENAI_BASE_URL=self.fake_url,
            OPENAI_API_KEY="bench",
            REVIEWS_ANALYSIS_MODE="async",
            LLM_BATCH_SIZE="10",
            Q_WORKERS=str(self.q_workers),
            **(
                {}
                if self.relay_queue_max is None
                else {"RELAY_QUEUE_MAX": str(self.relay_queue_max)}
            ),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        return env

    def setup_django(self) -> None:
        os.environ.update(self.env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()

    # ------------------------------------------------------------------ database

    def exclusive(self) -> None:
        """Refuse to run next to another benchmark on the same database: both would truncate
        and load the same tables. The lock lives as long as this connection."""
        import psycopg

        self.lock_conn = psycopg.connect(self.db_url, autocommit=True)
        got = self.lock_conn.execute("SELECT pg_try_advisory_lock(%s)", [BENCH_LOCK_KEY])
        if not got.fetchone()[0]:
            raise SystemExit(
                "another bench/run.py is using this database; wait for it to finish "
                f"(or set BENCH_DATABASE_URL to another database): {self._safe_url()}"
            )

    def sql(self, query: str, params: list | tuple | None = None, *, fetch: bool = True):
        import psycopg

        if self.sql_conn is None or self.sql_conn.closed:
            self.sql_conn = psycopg.connect(self.db_url, autocommit=True)
        cur = self.sql_conn.execute(query, params)
        return cur.fetchall() if fetch and cur.description else None

    def scalar(self, query: str, params: list | tuple | None = None):
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def migrate(self) -> None:
        from django.core.management import call_command

        say(f"database: {self._safe_url()} (migrate + createcachetable)")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("createcachetable", verbosity=0)

    def _safe_url(self) -> str:
        return re.sub(r"://([^:@/]+):[^@/]+@", r"://\1:***@", self.db_url)

    def fixtures(self) -> None:
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        from reviews.models import Restaurant

        users = get_user_model()
        platform_user, _ = users.objects.get_or_create(username="bench-platform")
        owner, _ = users.objects.get_or_create(username="bench-owner")
        self.token = Token.objects.get_or_create(user=platform_user)[0].key
        self.platform_user_id = platform_user.pk
        for n in range(1, RESTAURANTS + 1):
            Restaurant.objects.get_or_create(name=f"Bench restaurant {n}", owner=owner)
        self.restaurants = list(
            Restaurant.objects.filter(owner=owner).order_by("pk").values_list("pk", flat=True)
        )[:RESTAURANTS]

    def reset_data(self) -> None:
        """Empty the pipeline tables (restaurants, users and tokens stay)."""
        wanted = [
            "reviews_review",
            "outbox_outboxevent",
            "django_q_ormq",
            "django_q_task",
            "aiworker_llmcall",
            "aiworker_llmresult",
            "aiworker_breaker",  # a breaker opened by one scenario must not carry into the next
        ]
        existing = {
            r[0]
            for r in self.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
        tables = [t for t in wanted if t in existing]
        # Tasks still queued keep workers in transactions on these tables; TRUNCATE takes
        # its locks one table at a time and can deadlock with them.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.scalar(
            "SELECT count(*) FROM django_q_ormq WHERE to_regclass('django_q_ormq') IS NOT NULL"
        ):
            time.sleep(0.5)
        for attempt in range(5):
            try:
                self.sql("SET lock_timeout = '5s'", fetch=False)
                self.sql(f"TRUNCATE {', '.join(tables)} CASCADE", fetch=False)
                self.sql("VACUUM ANALYZE outbox_outboxevent", fetch=False)
                self.sql("VACUUM ANALYZE django_q_ormq", fetch=False)
                self.sql("VACUUM ANALYZE reviews_review", fetch=False)
                return
            except Exception as exc:  # a lock held by a worker mid-transaction: try again
                if attempt == 4:
                    raise
                say(f"  (truncate retry: {exc.__class__.__name__})")
                time.sleep(1)

    def breaker_reset(self) -> None:
        if self.scalar("SELECT to_regclass('aiworker_breaker') IS NOT NULL"):
            self.sql("DELETE FROM aiworker_breaker", fetch=False)

    def pending(self) -> int:
        return self.scalar("SELECT count(*) FROM reviews_review WHERE analysis_status='pending'")

    def insert_templates(self) -> dict:
        """INSERT column lists and values for a review and its event, from the models.

        Built from model metadata (defaults as Django would write them) so pgbench and the
        pre-loaders stay right when columns are added.
        """
        from django.db import connection
        from django.db.models import DateTimeField
        from psycopg import sql

        from outbox.models import OutboxEvent
        from reviews.models import Review

        connection.ensure_connection()

        def values(model, overrides: dict[str, str]) -> tuple[list[str], list[str]]:
            cols, vals = [], []
            for field in model._meta.concrete_fields:
                if field.primary_key and field.column not in overrides:
                    continue
                cols.append(field.column)
                if field.column in overrides:
                    vals.append(overrides[field.column])
                elif isinstance(field, DateTimeField) and (
                    field.auto_now
                    or field.auto_now_add
                    or (field.has_default() and callable(field.default))
                ):
                    vals.append("now()")
                else:
                    prep = field.get_db_prep_save(field.get_default(), connection)
                    vals.append(sql.Literal(prep).as_string(connection.connection))
            return cols, vals

        review = values(
            Review,
            {
                "restaurant_id": ":rest",
                "rating": ":rating",
                "text": "'Solid burger, fast delivery, would order again.'",
                "author_name": "'pgbench'",
                "submitted_by_id": str(self.platform_user_id),
            },
        )
        event = values(
            OutboxEvent,
            {
                "id": "gen_random_uuid()",
                "topic": "'reviews.created'",
                "key": "'restaurant:' || (:rest)::text",  # as reviews.services.review_event_key
                "payload": (
                    "jsonb_build_object('review_id', (:id)::bigint, 'revision', 1,"
                    " 'restaurant_id', (:rest)::bigint)"
                ),
            },
        )
        return {"review": review, "event": event}

    def review_insert_script(self) -> str:
        t = self.insert_templates()
        (rc, rv), (ec, ev) = t["review"], t["event"]
        return (
            "-- Generated by bench/run.py from the models: what review_create writes.\n"
            f"\\set rest random({min(self.restaurants)}, {max(self.restaurants)})\n"
            "\\set rating random(1, 5)\n"
            "BEGIN;\n"
            f"INSERT INTO reviews_review ({', '.join(rc)}) VALUES ({', '.join(rv)}) "
            "RETURNING id \\gset\n"
            # The outbox table's INSERT trigger sends the NOTIFY, as for the app.
            f"INSERT INTO outbox_outboxevent ({', '.join(ec)}) VALUES ({', '.join(ev)});\n"
            "END;\n"
        )

    def preload_reviews(self, count: int, *, with_events: bool = True) -> None:
        """Insert pending reviews (and their unpublished events) in bulk, oldest first."""
        t = self.insert_templates()
        rc, rv = t["review"]
        texts = [
            "Great burger, fries were a bit cold but the sauce is amazing.",
            "Comida maravilhosa e entrega rápida, chegou tudo quentinho.",
            "It was okay. Nothing special, delivery on time.",
            "O pedido atrasou mais de uma hora e a batata chegou murcha.",
        ]
        ids = ",".join(str(r) for r in self.restaurants)
        rv = [
            v.replace(":rest", f"(ARRAY[{ids}])[1 + g % {len(self.restaurants)}]")
            .replace(":rating", "1 + g % 5")
            .replace("now()", "now() - interval '1 minute' + g * interval '1 millisecond'")
            for v in rv
        ]
        text_idx = rc.index("text")
        rv[text_idx] = (
            "(ARRAY[" + ",".join("'" + s.replace("'", "''") + "'" for s in texts) + "])"
            f"[1 + g % {len(texts)}] || ' #' || g"
        )
        self.sql(
            f"INSERT INTO reviews_review ({', '.join(rc)}) "
            f"SELECT {', '.join(rv)} FROM generate_series(1, {int(count)}) AS g",
            fetch=False,
        )
        if with_events:
            ec, ev = t["event"]
            ev = [
                v.replace(":id", "r.id")
                .replace(":rest", "r.restaurant_id")
                .replace("now()", "r.created_at")
                for v in ev
            ]
            self.sql(
                f"INSERT INTO outbox_outboxevent ({', '.join(ec)}) "
                f"SELECT {', '.join(ev)} FROM reviews_review AS r ORDER BY r.id",
                fetch=False,
            )
        self.sql("ANALYZE reviews_review", fetch=False)
        self.sql("ANALYZE outbox_outboxevent", fetch=False)

    def load_events(self, count: int) -> None:
        """Unpublished `reviews.created` events only (the relay benchmark's input)."""
        self.sql("TRUNCATE outbox_outboxevent, django_q_ormq", fetch=False)
        t = self.insert_templates()
        ec, ev = t["event"]
        ev = [
            v.replace(":id", "g")
            .replace(":rest", f"{self.restaurants[0]} + g % {len(self.restaurants)}")
            .replace("now()", "now() - interval '1 minute' + g * interval '1 microsecond'")
            for v in ev
        ]
        # A key per event: one task per event, the same work as the raw-SQL reference (the
        # app's restaurant keys would let the relay share tasks and enqueue fewer rows).
        ev[ec.index("key")] = "'event:' || g"
        self.sql(
            f"INSERT INTO outbox_outboxevent ({', '.join(ec)}) "
            f"SELECT {', '.join(ev)} FROM generate_series(1, {int(count)}) AS g",
            fetch=False,
        )
        self.sql("VACUUM ANALYZE outbox_outboxevent", fetch=False)
        self.sql("VACUUM ANALYZE django_q_ormq", fetch=False)

    # ------------------------------------------------------------------ processes

    def note(self, name: str, argv: list[str]) -> None:
        text = " ".join(shlex.quote(str(a)) for a in argv)
        text = text.replace(self.token, "$TOKEN") if self.token else text
        self.commands.setdefault(name, text.replace(str(ROOT) + "/", ""))

    def start_fake(self, *, wait: bool = True, **faults) -> None:
        if self.procs.running("fake"):
            return
        args = ["fake_llm", "--port", str(self.ports["fake"]), "--force"]
        for name, value in faults.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.note("fake LLM", ["python", "manage.py", *args])
        self.procs.manage("fake", self.env, *args)
        if wait:
            self.fake_ready()

    def fake_ready(self) -> None:
        wait_for(lambda: http_ok(f"{self.fake_url}/models"), 20, "the fake LLM to listen")

    def fake(self, **faults) -> None:
        from aiworker.fake_llm import fake_control

        fake_control(self.fake_url, clear=True, **faults)

    def fake_stats(self) -> dict:
        from aiworker.fake_llm import fake_stats

        return fake_stats(self.fake_url)

    def start_web(
        self, name: str, *, mode: str = "async", workers: int, threads: int, wait: bool = True
    ) -> None:
        """gunicorn with settings.prod; `sync` runs the analysis inside the request.

        The sync server analyses one review per request (LLM_BATCH_SIZE=1, no batch-fill
        wait): what calling the AI inline means. With batching, one request's call would
        also analyse reviews of concurrent requests, which then return at once.
        """
        if self.procs.running(name):
            return
        port = self.ports[name]
        argv = [
            str(stack.BIN / "gunicorn"),
            "settings.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--keep-alive",
            "75",
            "--backlog",
            "2048",
            "--timeout",
            "120",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
        ]
        env = {**self.env, "REVIEWS_ANALYSIS_MODE": mode}
        if mode == "sync":
            env.update(LLM_BATCH_SIZE="1", LLM_BATCH_WAIT_MS="0")
        self.note(
            f"web ({mode}, {workers}x{threads})",
            (
                ["REVIEWS_ANALYSIS_MODE=sync", "LLM_BATCH_SIZE=1", "LLM_BATCH_WAIT_MS=0"]
                if mode == "sync"
                else []
            )
            + argv,
        )
        self.procs.start(name, argv, env)
        self.web_config[name] = (mode, workers, threads)
        if wait:
            self.web_ready(name)

    def web_ready(self, name: str) -> None:
        mode, workers, threads = self.web_config[name]
        port = self.ports[name]
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, f"gunicorn {name} to answer"
        )
        # Every thread answers a few times, so imports and each thread's DB connection are
        # done before the clock starts (a production server has long been warm).
        from concurrent.futures import ThreadPoolExecutor

        saved = None
        if mode == "sync" and self.procs.running("fake"):
            # The sync warm-up calls the provider: answer at once while it runs, so every
            # thread has imported the SDK and connected before the clock starts.
            from aiworker.fake_llm import _call

            saved = _call(self.fake_url, "GET", "/_control")
            self.fake()
        with ThreadPoolExecutor(workers * threads) as pool:
            # Sync: one analysis per process imports the SDK; threads connect on first use.
            count = workers * threads * 3 if mode == "async" else workers * 3
            list(pool.map(lambda _: self._post_once(port), range(count)))
        if saved is not None:
            self.fake(**saved)
            self.breaker_reset()

    def _post_once(self, port: int) -> int:
        body = json.dumps({"restaurant": self.restaurants[0], "rating": 5, "text": "warm-up"})
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/reviews/",
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Token {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def start_relay(self, *, queue_max: int | None = None) -> None:
        """The real relay command; `queue_max` overrides RELAY_QUEUE_MAX (0: no backpressure,
        for measurements without a consumer)."""
        if self.procs.running("relay"):
            return
        args = ["relay_outbox", "-v", "0"]
        env = self.env if queue_max is None else {**self.env, "RELAY_QUEUE_MAX": str(queue_max)}
        prefix = [] if queue_max is None else [f"RELAY_QUEUE_MAX={queue_max}"]
        self.note(
            "relay" if queue_max is None else "relay (no consumer)",
            [*prefix, "python", "manage.py", *args],
        )
        self.procs.manage("relay", env, *args)

    def start_qcluster(
        self,
        *,
        batch_size: int = 10,
        workers: int | None = None,
        wait: bool = True,
        nice: int | None = None,
    ) -> None:
        if self.procs.running("qcluster"):
            return
        nice = self.worker_nice if nice is None else nice
        workers = workers or self.q_workers
        env = {**self.env, "LLM_BATCH_SIZE": str(batch_size), "Q_WORKERS": str(workers)}
        prefix = ["nice", "-n", str(nice)] if nice else []
        self.note(
            f"worker (batch {batch_size}{f', nice {nice}' if nice else ''})",
            [
                f"Q_WORKERS={workers}",
                f"LLM_BATCH_SIZE={batch_size}",
                *prefix,
                "python",
                "manage.py",
                "qcluster",
            ],
        )
        self.procs.start("qcluster", [*prefix, PY, str(ROOT / "manage.py"), "qcluster"], env)
        self.qcluster_nice = nice
        self.qcluster_batch = batch_size
        self.qcluster_workers = workers
        if wait:
            self.qcluster_ready()

    def qcluster_ready(self) -> None:
        pid = self.procs.pid("qcluster")
        wait_for(lambda: self._cluster_stat(pid), 60, "the qcluster to start its workers")
        self.warm_workers(self.qcluster_workers)

    def warm_workers(self, workers: int) -> None:
        """Have every worker import the SDK and connect before the clock starts."""
        from django_q.tasks import async_task

        for _ in range(workers * 2):
            async_task("bench.warm.worker_warm", 0.3)
        wait_for(
            lambda: self.scalar("SELECT count(*) FROM django_q_ormq") == 0,
            60,
            "the warm-up tasks to be taken",
        )
        time.sleep(1.0)

    def _cluster_stat(self, pid: int):
        from django.db import connection
        from django_q.status import Stat

        try:
            for stat in Stat.get_all():
                if stat.pid == pid and stat.workers:
                    return stat
        except Exception:
            connection.close()
        return None

    def stop(self, name: str) -> None:
        if name in self.procs.procs:
            # qcluster can hang on SIGTERM (DESIGN.md §6): SIGKILL follows after 2 s.
            self.procs.stop(name, timeout=2 if name == "qcluster" else 8)

    def sync_mode_on(self) -> None:
        """Prepare for a sync web server.

        The async server stops (its idle DB connections would count against max_connections
        next to the sync server's many threads), and so does the relay: woken by the
        request's NOTIFY, it could hand the request's own event to a worker before the
        request claims it, and the request would return without calling the AI. In a sync
        deployment nothing else analyses the review. The qcluster keeps running.
        """
        self.stop("web")
        self.stop("relay")

    def sync_mode_off(self) -> None:
        self.start_relay()
        self.start_web("web", **WEB)

    def ensure_stack(self, *, web: bool = True, fake: bool = True) -> None:
        """Start whatever is missing, all at once, then wait for each to be ready."""
        new = {
            "fake": fake and not self.procs.running("fake"),
            "qcluster": not self.procs.running("qcluster"),
            "web": web and not self.procs.running("web"),
        }
        if new["fake"]:
            self.start_fake(wait=False)
        self.start_relay()
        if new["qcluster"]:
            self.start_qcluster(wait=False)
        if new["web"]:
            self.start_web("web", wait=False, **WEB)
        if new["fake"]:
            self.fake_ready()
        if new["qcluster"]:
            self.qcluster_ready()
        if new["web"]:
            self.web_ready("web")

    # ------------------------------------------------------------------ load generators

    def load(
        self,
        port: int,
        *,
        rate: float,
        duration: float,
        label: str,
        timeout: float = 10,
    ) -> dict:
        out = LOGS / f"load-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.json"
        argv = [
            PY,
            str(BENCH / "loadgen.py"),
            "--port",
            str(port),
            "--token",
            self.token,
            "--restaurants",
            ",".join(map(str, self.restaurants)),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--timeout",
            str(timeout),
            "--label",
            label,
            "--out",
            str(out),
        ]
        self.note("open-loop load", ["python", *argv[1:]])
        subprocess.run(argv, check=True, timeout=duration + timeout + 120)
        return json.loads(out.read_text())

    def wrk(self, port: int, *, conns: int, duration: float) -> dict:
        wrk = shutil.which("wrk")
        if not wrk:
            raise RuntimeError("wrk is not installed (make bench installs it: apt-get install wrk)")
        argv = [
            wrk,
            "-t2",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",  # wrk takes whole seconds only
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "post_review.lua"),
            f"http://127.0.0.1:{port}",
        ]
        env = {
            **os.environ,
            "BENCH_TOKEN": self.token,
            "BENCH_RESTAURANTS": ",".join(map(str, self.restaurants)),
        }
        self.note("wrk", ["wrk", *argv[1:]])
        out = subprocess.run(
            argv, env=env, capture_output=True, text=True, check=True, timeout=duration + 60
        ).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))
        data = json.loads(line.removeprefix("WRK_JSON "))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        data["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
        seconds = data["duration_us"] / 1e6
        data["rps"] = data["requests"] / seconds if seconds else 0
        data["errors"] = (
            data["non_2xx"]
            + data["connect_errors"]
            + data["read_errors"]
            + data["write_errors"]
            + data["timeouts"]
        )
        return data

    def pgbench(
        self,
        script: Path,
        *,
        clients: int,
        duration: float = 0,
        transactions: int = 0,
        defines: dict | None = None,
    ) -> dict:
        pgbench = shutil.which("pgbench") or "/usr/bin/pgbench"
        argv = [pgbench, "-n", "-M", "prepared", "-f", str(script), "-c", str(clients)]
        argv += ["-j", str(min(clients, 2))]
        argv += ["-T", f"{duration:g}"] if duration else ["-t", str(transactions)]
        for name, value in (defines or {}).items():
            argv += ["-D", f"{name}={value}"]
        argv.append(self.db_url)
        self.note(f"pgbench {script.name}", ["pgbench", *argv[1:-1], "DBURL"])
        self.commands[f"pgbench {script.name}"] = self.commands[f"pgbench {script.name}"].replace(
            "DBURL", "$DATABASE_URL"
        )
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-500:]}")
        tps = float(re.search(r"tps = ([\d.]+)", proc.stdout).group(1))
        lat = re.search(r"latency average = ([\d.]+) ms", proc.stdout)
        return {
            "tps": tps,
            "latency_avg_ms": float(lat.group(1)) if lat else None,
            "wall_s": wall,
            "clients": clients,
        }

    # ------------------------------------------------------------------ sampling

    def kinds(self, *, extra: bool = False) -> dict[int, str]:
        """pid -> process kind for every process of the stack (`extra`: also the fake LLM,
        the load generators and the PostgreSQL backends serving the benchmark database)."""
        kinds: dict[int, str] = {}
        if extra:
            with contextlib.suppress(Exception):
                for (pid,) in self.sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                ):
                    kinds[pid] = "postgres (bench db)"
            if self.procs.running("fake"):
                kinds[self.procs.pid("fake")] = "fake LLM"
            for pid in descendants(os.getpid()):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    argv0 = cmd.split(b"\x00", 1)[0].rsplit(b"/", 1)[-1]
                    if b"loadgen.py" in cmd or argv0 == b"wrk":
                        kinds[pid] = "load generator"
        for name in ("web", "web_sync", "web_sync_dflt"):
            if self.procs.running(name):
                master = self.procs.pid(name)
                kinds[master] = "gunicorn master"
                for pid in descendants(master):
                    kinds[pid] = "gunicorn worker"
        if self.procs.running("relay"):
            kinds[self.procs.pid("relay")] = "relay"
        if self.procs.running("qcluster"):
            root = self.procs.pid("qcluster")
            tree = descendants(root)
            kinds[root] = "qcluster main"
            stat = self._cluster_stat(root)
            roles = {}
            if stat is not None:
                roles = {
                    stat.sentinel: "qcluster sentinel",
                    stat.pusher: "qcluster pusher",
                    stat.monitor: "qcluster monitor",
                }
                roles.update({pid: "qcluster worker" for pid in stat.workers})
            for pid in tree:
                kinds[pid] = roles.get(pid, "qcluster worker" if stat is None else "qcluster other")
        return kinds

    def sampler(self, *, interval: float, snapshot: bool = True) -> Sampler:
        return Sampler(self, interval=interval, snapshot=snapshot)

    # ------------------------------------------------------------------ scenarios

    def run(self, names: list[str]) -> None:
        started = time.monotonic()
        self.load_start = os.getloadavg()
        say(
            f"benchmarks ({self.mode}): {', '.join(names)}; 1-min load at start "
            f"{self.load_start[0]:.2f}; logs in {LOGS.relative_to(ROOT)}/"
        )
        self.exclusive()
        self.setup_django()
        self.migrate()
        self.fixtures()
        self.reset_data()
        for name in [n for n in SCENARIOS if n in names]:
            self.stage = name
            if name != "ai_down":
                self.stop("web_sync")  # scenario 1 leaves it up for scenario 2 only
            say(f"\n=== {TITLES[name]} ({self.mode}) ===")
            t0 = time.monotonic()
            result = getattr(self, f"sc_{name}")()
            result.update(
                mode=self.mode,
                date=now_iso(),
                seconds=round(time.monotonic() - t0, 1),
                load_at_start=round(self.load_before, 2),
            )
            self.results[name] = result
            say("\n" + result["md"])
            say(f"({name}: {result['seconds']:.0f} s)")
        self.total_s = time.monotonic() - started

    def begin(self) -> None:
        self.load_before = os.getloadavg()[0]

    # 1 ------------------------------------------------------------------------------------
    def sc_sync_async(self) -> dict:
        p = self.p["sync_async"]
        self.begin()
        self.ensure_stack()
        self.fake(latency_ms=1800, jitter_ms=400)
        self.reset_data()
        runs: dict[str, list[dict]] = {"async": [], "async_nice": [], "sync": [], "sync_dflt": []}
        for i in range(p["runs"]):
            runs["async"].append(
                self.load(
                    self.ports["web"],
                    rate=p["rate"],
                    duration=p["run_s"],
                    label=f"async {i + 1}/{p['runs']}",
                    timeout=p["timeout"],
                )
            )
        if p["nice_runs"]:
            # The same load with the workers at a lower CPU priority than the web server:
            # the POST tail comes from sharing 2 cores with the analysis.
            self.stop("qcluster")
            self.reset_data()  # the new cluster must not start with the last runs' backlog
            self.start_qcluster(nice=10)
            for i in range(p["nice_runs"]):
                runs["async_nice"].append(
                    self.load(
                        self.ports["web"],
                        rate=p["rate"],
                        duration=p["run_s"],
                        label=f"async, workers at nice 10 {i + 1}/{p['nice_runs']}",
                        timeout=p["timeout"],
                    )
                )
            self.stop("qcluster")
            self.reset_data()
            self.start_qcluster()
        self.sync_mode_on()
        if p["default_run_s"]:  # full mode only: the queueing row
            self.start_web("web_sync_dflt", mode="sync", **WEB)
            runs["sync_dflt"].append(
                self.load(
                    self.ports["web_sync_dflt"],
                    rate=p["rate"],
                    duration=p["default_run_s"],
                    label="sync, async's thread count",
                    timeout=p["default_timeout"],
                )
            )
            self.stop("web_sync_dflt")
        self.start_web("web_sync", mode="sync", **SYNC_WEB)
        for i in range(p["runs"]):
            runs["sync"].append(
                self.load(
                    self.ports["web_sync"],
                    rate=p["rate"],
                    duration=p["run_s"],
                    label=f"sync {i + 1}/{p['runs']}",
                    timeout=p["timeout"],
                )
            )
        # The sync server stays up for scenario 2; whatever runs next restarts the rest.
        rows, figures = [], {}
        configs = {
            "async": ("async", WEB),
            "async_nice": ("async, workers at nice 10", WEB),
            "sync": ("sync", SYNC_WEB),
            "sync_dflt": ("sync", WEB),
        }
        for key, group in runs.items():
            if not group:
                continue
            mode, web = configs[key]
            pooled = [v for r in group for v in r["latencies_ms"]]
            d = dist(pooled)
            errors = sum(r["error_count"] for r in group)
            err_kinds: dict[str, int] = {}
            for r in group:
                for k, v in r["errors"].items():
                    err_kinds[k] = err_kinds.get(k, 0) + v
            per_run = spread([r["p99_ms"] for r in group])
            figures[key] = {
                "mode": mode,
                "web": web,
                "runs": len(group),
                "run_s": group[0]["duration_s"],
                "sent": sum(r["sent"] for r in group),
                "ok": sum(r["ok"] for r in group),
                "errors": errors,
                "error_kinds": err_kinds,
                "max_send_lag_ms": max(r["max_send_lag_ms"] for r in group),
                "latency_ms": d,
                "p99_per_run": per_run,
                "timeout_s": p["timeout"] if key != "sync_dflt" else p["default_timeout"],
            }
            errs = f"{errors}" + (
                f" ({', '.join(f'{k}: {v}' for k, v in err_kinds.items())})" if err_kinds else ""
            )
            rows.append(
                [
                    mode,
                    f"{web['workers']}×{web['threads']}",
                    f"{len(group)}×{group[0]['duration_s']:g} s",
                    figures[key]["sent"],
                    figures[key]["ok"],
                    errs,
                    fmt(d["p50"]),
                    fmt(d["p95"]),
                    fmt(d["p99"]),
                    fmt(d["max"]),
                    fmt_spread(per_run),
                ]
            )
        a99 = figures["async"]["latency_ms"]["p99"]
        s99 = figures["sync"]["latency_ms"]["p99"]
        ratio = s99 / a99 if a99 else None
        figures["ratio_p99"] = ratio
        figures["targets"] = {
            "async_p99_le_15ms": a99 <= 15 and figures["async"]["errors"] == 0,
            "ratio_ge_100": ratio is not None and ratio >= 100,
        }
        md = (
            f"Open-loop arrivals at {p['rate']} req/s, latency measured from each request's "
            "scheduled send time to the end of its answer; the fake LLM answers in 1.8–2.2 s "
            "(latency 1800 ms + uniform jitter 0–400 ms). Relay and qcluster run during async "
            "runs; during sync runs the relay is stopped (see below) and the sync server "
            "analyses one review per request (LLM_BATCH_SIZE=1, no batch-fill wait). "
            f"Client timeout {p['timeout']} s ({p['default_timeout']} s for the last row).\n\n"
            + table(
                [
                    "mode",
                    "gunicorn workers×threads",
                    "runs",
                    "sent",
                    "2xx",
                    "errors",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "max ms",
                    "p99 per run: median [min–max]",
                ],
                rows,
            )
            + f"\n\n**sync/async p99 ratio: {fmt(ratio, 0)}×** (target ≥ 100×: "
            f"{verdict(figures['targets']['ratio_ge_100'])}); async p99 {fmt(a99, 1)} ms "
            f"(target ≤ 15 ms with 0 errors: {verdict(figures['targets']['async_p99_le_15ms'])}).\n\n"
            + (
                f"With the qcluster started under `nice -n 10` (second row) the async p99 is "
                f"{fmt(figures['async_nice']['latency_ms']['p99'], 1)} ms against "
                f"{fmt(a99, 1)} ms: "
                + (
                    "giving the web server CPU priority over the workers (a deployment choice, "
                    "not a code change) shortens the POST tail.\n\n"
                    if figures["async_nice"]["latency_ms"]["p99"] < 0.8 * a99
                    else "CPU priority over the workers hardly changes the POST tail at this "
                    "rate: the tail is not mainly the worker processes' own CPU use.\n\n"
                )
                if "async_nice" in figures
                else ""
            )
            + f"The sync anti-pattern holds a gunicorn thread for the whole provider call. With "
            f"{SYNC_WEB['workers'] * SYNC_WEB['threads']} threads it can hold "
            f"{p['rate']} req/s × ~2.2 s in flight, so each request costs the provider's "
            "latency (anything above its 1.8–2.2 s is queueing inside the server); with the "
            f"async server's {WEB['workers'] * WEB['threads']} threads (last row, full runs "
            f"only) at most ~{WEB['workers'] * WEB['threads'] / 2.2:.0f} req/s can be served, "
            "requests queue without bound, and latency grows with the length of the run until "
            "clients time out. During sync runs the relay is stopped: woken by the request's "
            "NOTIFY it could hand the request's own event to a worker first, and the request "
            "would return without calling the AI (in a sync deployment nothing else would "
            "analyse it)."
        )
        return {"md": md, "figures": figures}

    # 2 ------------------------------------------------------------------------------------
    def sc_ai_down(self) -> dict:
        p = self.p["ai_down"]
        self.begin()
        cases = [
            ("healthy (baseline)", {"latency_ms": 1800, "jitter_ms": 400}),
            ("503 on every call", {"status": 503}),
            ("hangs past the client timeout", {"hang_s": 120}),
            ("not running", None),
        ]
        figures: dict = {"async": {}, "sync": {}}
        rows = []

        def apply(faults):
            if faults is None:
                self.stop("fake")
            else:
                self.start_fake()
                self.fake(**faults)

        # Sync first: scenario 1 leaves the sync server running.
        self.start_fake()
        if not self.procs.running("web_sync"):
            self.sync_mode_on()
            self.start_web("web_sync", mode="sync", **SYNC_WEB)
        self.reset_data()
        for case, faults in cases[1:]:
            apply(faults)
            self.breaker_reset()  # each case starts with a provider believed healthy
            hang = "hang" in case
            rate = 5 if hang else p["rate"]
            timeout = p["hang_timeout"] if hang else 30
            group = [
                self.load(
                    self.ports["web_sync"],
                    rate=rate,
                    duration=p["sync_run_s"],
                    label=f"sync, AI {case}",
                    timeout=timeout,
                )
            ]
            figures["sync"][case] = self._summary(group, timeout)
        self.stop("web_sync")
        self.start_fake()
        self.ensure_stack()  # relay and the async web server again
        self.reset_data()
        earlier = self.results.get("sync_async", {}).get("figures", {}).get("async")
        for case, faults in cases:
            apply(faults)
            self.breaker_reset()
            if case.startswith("healthy") and earlier:
                figures["async"][case] = {**earlier, "rate": p["rate"], "from": "scenario 1"}
                continue
            group = [
                self.load(
                    self.ports["web"],
                    rate=p["rate"],
                    duration=p["run_s"],
                    label=f"async, AI {case.split(' (')[0]} {i + 1}/{p['runs']}",
                )
                for i in range(p["runs"])
            ]
            figures["async"][case] = self._summary(group, 10)
        self.start_fake()
        self.fake(latency_ms=1800, jitter_ms=400)
        self.breaker_reset()
        base = figures["async"]["healthy (baseline)"]
        base_p99 = base["latency_ms"]["p99"]
        base_noise = base["p99_per_run"]["max"] or base_p99
        ok_all = True
        for mode in ("async", "sync"):
            for case, s in figures[mode].items():
                d = s["latency_ms"]
                note = ""
                if mode == "async" and not case.startswith("healthy"):
                    within = d["p99"] <= max(base_noise * 1.25, base_p99 + 5) and s["errors"] == 0
                    s["unchanged"] = within
                    ok_all &= within
                    note = f"{d['p99'] / base_p99:.2f}× baseline p99: {verdict(within)}"
                if mode == "sync":
                    if s["error_kinds"].get("timeout"):
                        note = f"hangs: the client gave up after {s['timeout_s']:g} s"
                    elif d["p50"] >= 1000:
                        note = "hangs until the SDK times out, then 202 with the analysis pending"
                    else:
                        note = (
                            "fails fast: 202 with the analysis pending; the breaker opens after "
                            "a few failures and later requests skip the call"
                        )
                rows.append(
                    [
                        mode,
                        case,
                        f"{s['runs']}×{s['run_s']:g} s @ {s['rate']:g}/s",
                        s["sent"],
                        s["ok"],
                        s["errors"],
                        fmt(d["p50"]),
                        fmt(d["p99"]),
                        fmt(d["max"]),
                        note,
                    ]
                )
        figures["targets"] = {"async_unchanged_0_errors": ok_all}
        md = (
            "The same open-loop load while the fake provider fails in three ways. Async rows "
            'run at the production thread count; sync rows at the sync server\'s. "Unchanged" '
            "means p99 ≤ max(1.25 × the slowest baseline run's p99, baseline p99 + 5 ms) with "
            "0 errors.\n\n"
            + table(
                [
                    "mode",
                    "AI provider",
                    "load",
                    "sent",
                    "2xx",
                    "errors",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "verdict / what happened",
                ],
                rows,
            )
            + f"\n\nAsync POST unchanged with 0 errors in every failure: {verdict(ok_all)}. "
            "In sync mode the request waits for the provider: a 503 or a refused connection "
            "comes back at once, so the request returns 202 quickly with nothing analysed (the "
            "event retries through the outbox, and the circuit breaker stops further calls); a "
            "provider that hangs holds every request, and its gunicorn thread, until the SDK's "
            f"timeout (LLM_TIMEOUT_S = {self._setting('LLM_TIMEOUT_S')} s) or the client gives up."
        )
        return {"md": md, "figures": figures}

    @staticmethod
    def _setting(name: str):
        from django.conf import settings

        return getattr(settings, name, "?")

    def _summary(self, group: list[dict], timeout: float) -> dict:
        pooled = [v for r in group for v in r["latencies_ms"]]
        kinds: dict[str, int] = {}
        for r in group:
            for k, v in r["errors"].items():
                kinds[k] = kinds.get(k, 0) + v
        return {
            "runs": len(group),
            "run_s": group[0]["duration_s"],
            "rate": group[0]["rate"],
            "sent": sum(r["sent"] for r in group),
            "ok": sum(r["ok"] for r in group),
            "errors": sum(r["error_count"] for r in group),
            "error_kinds": kinds,
            "timeout_s": timeout,
            "latency_ms": dist(pooled),
            "p99_per_run": spread([r["p99_ms"] for r in group]),
        }

    # 3 ------------------------------------------------------------------------------------
    def sc_max_rate(self) -> dict:
        p = self.p["max_rate"]
        self.begin()
        self.ensure_stack()
        self.fake(latency_ms=1800, jitter_ms=400)
        self.reset_data()
        port = self.ports["web"]
        sweep = []
        # CPU per accepted review, per process kind, sampled over every wrk run.
        sampler = self.sampler(interval=0.5, snapshot=False)
        sampler.start()
        for conns in p["wrk_conns"]:
            say(f"  wrk -c{conns} for {p['wrk_s']} s …")
            r = self.wrk(port, conns=conns, duration=p["wrk_s"])
            say(f"    {r['rps']:.0f} req/s, p99 {r['p99_us'] / 1000:.1f} ms, {r['errors']} errors")
            sweep.append({"conns": conns, **r})
        best = max(sweep, key=lambda r: r["rps"] if r["errors"] == 0 else 0)
        reps = [best]
        for _ in range(p["reps"] - 1):
            say(f"  wrk -c{best['conns']} again …")
            reps.append(self.wrk(port, conns=best["conns"], duration=p["wrk_s"]))
        sampler.stop()
        sampled_requests = sum(r["requests"] for r in sweep + reps[1:])
        cpu = sampler.cpu()
        cpu_rows = [
            [kind, fmt(secs, 1), fmt(secs * 1000 / max(sampled_requests, 1), 2)]
            for kind, secs in sorted(cpu.items(), key=lambda kv: -kv[1])
        ]
        wrk_rps = spread([r["rps"] for r in reps])
        self.reset_data()
        # Open loop: step the arrival rate up until p99 > 50 ms or an error.
        top = wrk_rps["median"]
        step = max(10, round(top * 0.1 / 10) * 10)
        rate = max(step, round(top * 0.5 / 10) * 10)
        if self.quick:
            rate, step = max(step, round(top * 0.6 / 10) * 10), max(10, round(top * 0.15 / 10) * 10)
        steps, passing = [], None
        for _ in range(p["max_steps"]):
            r = self.load(port, rate=rate, duration=p["step_s"], label=f"open loop {rate}/s")
            ok = r["p99_ms"] <= SLO_MS and r["error_count"] == 0
            steps.append(self._step(r, ok))
            if ok:
                passing = rate
                rate += step
            elif passing is None and rate > step:
                rate = max(10, rate // 2)  # even the first step failed: look lower
            else:
                break
        confirm = []
        if passing:
            confirm = [s for s in steps if s["rate"] == passing and s["ok"]][:1]
            for i in range(p["reps"] - 1):
                r = self.load(
                    port,
                    rate=passing,
                    duration=p["step_s"],
                    label=f"confirm {passing}/s {i + 2}/{p['reps']}",
                )
                confirm.append(self._step(r, r["p99_ms"] <= SLO_MS and r["error_count"] == 0))
        confirmed = passing if confirm and all(c["ok"] for c in confirm) else None
        # pgbench: the same two inserts + NOTIFY, same database, same moment.
        script = LOGS / "review_insert.sql"
        script.write_text(self.review_insert_script())
        pg = []
        for c in p["pgbench_clients"]:
            say(f"  pgbench review_insert.sql -c {c} for {p['pgbench_s']} s …")
            r = self.pgbench(script, clients=c, duration=p["pgbench_s"])
            say(f"    {r['tps']:.0f} tps")
            pg.append(r)
        pg_best = max(pg, key=lambda r: r["tps"])
        pg_reps = [pg_best] + [
            self.pgbench(script, clients=pg_best["clients"], duration=p["pgbench_s"])
            for _ in range(p["reps"] - 1)
        ]
        pg_tps = spread([r["tps"] for r in pg_reps])
        self.reset_data()
        accepted = confirmed or passing or 0
        figures = {
            "wrk_sweep": [{k: v for k, v in r.items()} for r in sweep],
            "wrk_best_conns": best["conns"],
            "wrk_rps": wrk_rps,
            "open_loop_steps": steps,
            "open_loop_confirm": confirm,
            "max_accepted_rate": accepted,
            "pgbench": pg,
            "pgbench_best_clients": pg_best["clients"],
            "pgbench_tps": pg_tps,
            "ratio_web_to_db": accepted / pg_tps["median"] if pg_tps["median"] else None,
            "ratio_wrk_to_db": wrk_rps["median"] / pg_tps["median"] if pg_tps["median"] else None,
            "pgbench_script": script.read_text(),
            "cpu_s": cpu,
            "cpu_sampled_requests": sampled_requests,
            "targets": {"ge_1000_per_s": accepted >= 1000},
        }
        md = (
            "Closed loop (wrk, 2 threads, POST bodies from bench/post_review.lua) finds the "
            "throughput ceiling; the open-loop generator then steps the arrival rate up until "
            f"p99 exceeds {SLO_MS:.0f} ms or a request fails. pgbench runs the same two INSERTs "
            "(review + outbox event, with the NOTIFY) in one transaction against the same "
            "database right after. Relay and qcluster run throughout (fake LLM at ~2 s).\n\n"
            + table(
                ["wrk connections", "req/s", "p50 ms", "p99 ms", "errors"],
                [
                    [
                        r["conns"],
                        fmt(r["rps"], 0),
                        fmt(r["p50_us"] / 1000),
                        fmt(r["p99_us"] / 1000),
                        r["errors"],
                    ]
                    for r in sweep
                ],
            )
            + f"\n\nwrk at {best['conns']} connections over {len(reps)} runs: "
            f"{fmt_spread(wrk_rps, 0)} req/s. Where the CPU went during all wrk runs "
            f"({sampled_requests:,} accepted reviews; both cores together offer 2 CPU-seconds "
            "per second):\n\n"
            + table(["process kind", "CPU s", "CPU ms per accepted review"], cpu_rows)
            + "\n\n"
            + table(
                [
                    "open-loop rate /s",
                    "sent",
                    "achieved /s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "errors",
                    f"p99 ≤ {SLO_MS:.0f} ms, 0 errors",
                ],
                [
                    [
                        s["rate"],
                        s["sent"],
                        fmt(s["achieved_rate"], 0),
                        fmt(s["p50_ms"]),
                        fmt(s["p99_ms"]),
                        fmt(s["max_ms"]),
                        s["errors"],
                        "yes" if s["ok"] else "no",
                    ]
                    for s in steps + confirm[1:]
                ],
            )
            + "\n\n"
            + table(
                ["", "rate /s"],
                [
                    [
                        "maximum accepted rate (open loop, p99 ≤ 50 ms, 0 errors; passed "
                        f"{sum(c['ok'] for c in confirm)} of {len(confirm)} runs at that rate, "
                        f"p99 {fmt_spread(spread([c['p99_ms'] for c in confirm]))} ms)",
                        fmt(accepted, 0),
                    ],
                    [
                        f"wrk closed-loop maximum ({best['conns']} connections)",
                        fmt_spread(wrk_rps, 0),
                    ],
                    [
                        f"pgbench, same two INSERTs + NOTIFY ({pg_best['clients']} clients)",
                        fmt_spread(pg_tps, 0),
                    ],
                    ["accepted / pgbench", fmt(figures["ratio_web_to_db"], 2)],
                ],
            )
            + "\n\npgbench by clients: "
            + ", ".join(f"{r['clients']}: {r['tps']:.0f} tps" for r in pg)
            + f".\n\nTarget ≥ 1,000 accepted reviews/s on 2 cores: {verdict(accepted >= 1000)}."
        )
        return {"md": md, "figures": figures}

    @staticmethod
    def _step(r: dict, ok: bool) -> dict:
        return {
            "rate": r["rate"],
            "sent": r["sent"],
            "achieved_rate": r["achieved_rate"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "max_ms": r["max_ms"],
            "errors": r["error_count"],
            "max_send_lag_ms": r["max_send_lag_ms"],
            "ok": ok,
        }

    # 4 ------------------------------------------------------------------------------------
    def sc_e2e(self) -> dict:
        p = self.p["e2e"]
        self.begin()
        self.ensure_stack()
        out, rows, stage_rows, cpu_rows, figures = {}, [], [], [], {}
        memory_peaks: dict[str, dict] = {}
        for latency in p["latencies"]:
            self.fake(latency_ms=latency)
            self.reset_data()
            if latency == p["latencies"][0]:
                self.warm_workers(self.q_workers)  # workers recycled since their warm-up
            sampler = self.sampler(interval=1.0)
            sampler.start()
            post = self.load(
                self.ports["web"],
                rate=p["rate"],
                duration=p["run_s"],
                label=f"e2e fake {latency} ms",
            )
            load_end = time.monotonic()
            backlog_at_end = self.pending()
            deadline = load_end + p["drain_s"]
            while time.monotonic() < deadline:
                left = self.pending()
                if left == 0:
                    break
                say(f"  draining: {left} reviews pending")
                time.sleep(2)
            drain_s = time.monotonic() - load_end
            left = self.pending()
            sampler.stop()
            st = self.stage_times()
            peaks = sampler.peaks()
            for kind, v in peaks.items():
                m = memory_peaks.setdefault(kind, {"hwm_kib": 0, "pss_total_kib": 0, "count": 0})
                m["hwm_kib"] = max(m["hwm_kib"], v["hwm_kib"])
                m["pss_total_kib"] = max(m["pss_total_kib"], v["pss_total_kib"])
                m["count"] = max(m["count"], v["count"])
            cpu = sampler.cpu()
            for kind, secs in sorted(cpu.items()):
                cpu_rows.append(
                    [f"{latency} ms", kind, fmt(secs, 1), fmt(secs * 1000 / max(st["n"], 1), 2)]
                )
            depth = [s.get("queue_depth", 0) for s in sampler.series]
            pend = [s.get("pending", 0) for s in sampler.series]
            figures[str(latency)] = {
                "post": {
                    k: post[k] for k in ("sent", "ok", "error_count", "p50_ms", "p99_ms", "max_ms")
                },
                "analysed": st["n"],
                "ledger_row": st["ledger_row"],
                "accepted": st["accepted"],
                "stages_ms": st["stages"],
                "calls": st["calls"],
                "backlog_at_load_end": backlog_at_end,
                "drained": left == 0,
                "drain_s": round(drain_s, 1) if left == 0 else None,
                "left_pending": left,
                "max_queue_depth": max(depth, default=0),
                "max_pending": max(pend, default=0),
                "cpu_s": cpu,
                "series": sampler.series,
            }
            s = st["stages"]
            rows.append(
                [
                    f"{latency} ms",
                    f"{post['sent']} ({post['error_count']} errors)",
                    st["n"],
                    fmt(s["total"]["p50"], 0),
                    fmt(s["total"]["p99"], 0),
                    fmt(s["total"]["max"], 0),
                    fmt(st["calls"]["mean_batch"], 1),
                    max(depth, default=0),
                    backlog_at_end,
                    f"yes, {drain_s:.0f} s after the load" if left == 0 else f"no: {left} left",
                ]
            )
            for stage in ("outbox", "queue", "provider", "writeback", "total"):
                stage_rows.append(
                    [
                        f"{latency} ms",
                        STAGE_NAMES[stage],
                        fmt(s[stage]["p50"], 0),
                        fmt(s[stage]["p99"], 0),
                        fmt(s[stage]["max"], 0),
                    ]
                )
            out[latency] = sampler.series
        figures["memory_peaks"] = memory_peaks
        zero = figures.get("0")
        figures["targets"] = {
            # Only a run in which every accepted review was found analysed counts.
            "p99_le_1s_at_0ms": bool(zero)
            and zero["analysed"] == zero["post"]["ok"] > 0
            and zero["stages_ms"]["total"]["p99"] <= 1000
        }
        series_md = []
        for latency, series in out.items():
            points = series[:: max(1, len(series) // 12)]
            series_md.append(
                f"fake at {latency} ms, every ~{points[1]['t'] - points[0]['t']:.0f} s "
                "(t s: pending reviews / unpublished events / queue depth): "
                + ", ".join(
                    f"{s['t']:.0f}: {s.get('pending', '?')}/{s.get('unpublished', '?')}/"
                    f"{s.get('queue_depth', '?')}"
                    for s in points
                )
                if len(points) > 1
                else ""
            )
        md = (
            f"{p['rate']} reviews/s for {p['run_s']} s through the API (open loop), "
            f"Q_WORKERS={self.q_workers}, LLM_BATCH_SIZE=10, LLM_BATCH_WAIT_MS=200, "
            f"RELAY_QUEUE_MAX={self.env.get('RELAY_QUEUE_MAX', f'{4 * self.q_workers} (default)')}. "
            "Stage times "
            "come from the database (LlmCall row written "
            + figures[str(p["latencies"][0])]["ledger_row"]
            + "): outbox wait = hand-off (the review's event published_at, or the batch "
            "leader's LlmCall.handed_off_at if earlier) − review created_at; queue wait = "
            "provider call start − hand-off (it includes the worker's deliberate batch-fill "
            "wait of up to 200 ms); provider call = LlmCall.latency_ms; write-back = "
            "analyzed_at − call end. A review that joined another review's batch is counted "
            "from its own commit, and stages are kept between commit and call start, so the "
            "four stages add up to the total. Review created_at is set just before the INSERT "
            "(commit follows within the same request), the best commit time the app records.\n\n"
            + table(
                [
                    "fake LLM",
                    "reviews posted",
                    "analysed",
                    "e2e p50 ms",
                    "e2e p99 ms",
                    "e2e max ms",
                    "reviews per call",
                    "max queue depth",
                    "pending at load end",
                    "backlog drained",
                ],
                rows,
            )
            + "\n\n"
            + table(["fake LLM", "stage", "p50 ms", "p99 ms", "max ms"], stage_rows)
            + "\n\nCPU used per process kind from the start of the load until the backlog "
            "drained (/proc/PID/stat; PostgreSQL backends of the benchmark database found via "
            "pg_stat_activity), and per analysed review:\n\n"
            + table(["fake LLM", "process kind", "CPU s", "CPU ms per review"], cpu_rows)
            + "\n\nBacklog over time: "
            + "; ".join(x for x in series_md if x)
            + f"\n\nTarget e2e p99 ≤ 1 s with the fake at 0 ms: "
            f"{verdict(figures['targets']['p99_le_1s_at_0ms'])}."
        )
        return {"md": md, "figures": figures}

    def stage_times(self) -> dict:
        """Per-review stage durations from the timestamps the pipeline records.

        The ledger row of a provider call is either written before the call (created_at =
        call start; newer code, with `handed_off_at`) or right after it (created_at = call
        end): both layouts are read.
        """
        from aiworker.models import LlmCall

        fields = {f.name for f in LlmCall._meta.get_fields()}
        before = "STARTED" in LlmCall.Status.names
        handed_col = "c.handed_off_at" if "handed_off_at" in fields else "NULL::timestamptz"
        rows = self.sql(
            f"""
            SELECT r.created_at, e.published_at, {handed_col}, c.created_at, c.latency_ms,
                   r.analyzed_at
            FROM reviews_review r
            JOIN outbox_outboxevent e
              ON (e.payload ->> 'review_id')::bigint = r.id AND e.topic = 'reviews.created'
            JOIN aiworker_llmresult lr ON lr.review_id = r.id
            JOIN aiworker_llmcall c ON c.id = lr.call_id
            WHERE r.analysis_status = 'done' AND r.analyzed_at IS NOT NULL
            """
        )
        stages: dict[str, list[float]] = {k: [] for k in STAGE_NAMES}
        for created, published, call_handed, call_at, latency_ms, analyzed in rows:
            latency = dt.timedelta(milliseconds=latency_ms)
            call_start, call_end = (
                (call_at, call_at + latency) if before else (call_at - latency, call_at)
            )
            # Handed off: the review's own event or the batch leader's, whichever came first,
            # kept between the commit and the call start so the stages add up to the total.
            handed = min(t for t in (published, call_handed, call_start) if t is not None)
            handed = max(handed, created)
            stages["outbox"].append((handed - created).total_seconds() * 1000)
            stages["queue"].append((call_start - handed).total_seconds() * 1000)
            stages["provider"].append(float(latency_ms))
            stages["writeback"].append((analyzed - call_end).total_seconds() * 1000)
            stages["total"].append((analyzed - created).total_seconds() * 1000)
        calls = self.sql(
            "SELECT count(*), coalesce(avg(batch_size), 0), coalesce(sum(prompt_tokens), 0) "
            "FROM aiworker_llmcall WHERE status = 'ok'"
        )[0]
        return {
            "n": len(rows),
            "ledger_row": "before the call" if before else "after the call",
            "accepted": self.scalar("SELECT count(*) FROM reviews_review"),
            "stages": {k: dist(v) for k, v in stages.items()},
            "calls": {
                "ok_calls": calls[0],
                "mean_batch": float(calls[1]),
                "prompt_tokens": int(calls[2]),
            },
        }

    # 5 ------------------------------------------------------------------------------------
    def sc_memory(self) -> dict:
        p = self.p["memory"]
        self.begin()
        self.ensure_stack()
        self.fake(latency_ms=1800, jitter_ms=400)
        self.reset_data()
        total = p["events"]
        sampler = self.sampler(interval=2.0 if not self.quick else 0.5)
        sampler.start()
        say(f"  wrk posts {total:,} reviews (relay and workers run at the same time) …")
        # wrk runs for a duration, not a count: chunks sized from the rate so far.
        r = {"requests": 0, "errors": 0, "seconds": 0.0}
        rate = 300.0
        for _ in range(200):
            left = total - r["requests"]
            if left <= 0 or r["seconds"] >= p["max_s"]:
                break  # done, or the time cap that keeps `make bench` within ~20 minutes
            budget = p["max_s"] - r["seconds"]
            chunk = self.wrk(
                self.ports["web"], conns=16, duration=max(2, min(30, budget, round(left / rate)))
            )
            r["requests"] += chunk["requests"]
            r["errors"] += chunk["errors"]
            r["seconds"] += chunk["duration_us"] / 1e6
            rate = max(50.0, r["requests"] / r["seconds"])
            say(f"    {r['requests']:,}/{total:,} requests, {rate:.0f}/s, {r['errors']} errors")
        r["rps"] = r["requests"] / r["seconds"] if r["seconds"] else 0
        sampler.stop()
        handed = self.scalar(
            "SELECT count(*) FROM outbox_outboxevent WHERE published_at IS NOT NULL"
        )
        analysed = self.scalar("SELECT count(*) FROM reviews_review WHERE analysis_status='done'")
        series = sampler.series
        kinds = sorted({k for s in series for k in s.get("rss", {})})
        growth_rows, growth = [], {}
        if len(series) >= 4:
            first = series[max(1, len(series) // 10)]  # after warm-up
            last = series[-1]
            for kind in kinds:
                a, b = first["pss"].get(kind), last["pss"].get(kind)
                ra, rb = first["rss"].get(kind), last["rss"].get(kind)
                if a is None or b is None:
                    continue
                growth[kind] = {
                    "pss_start_kib": a,
                    "pss_end_kib": b,
                    "rss_start_kib": ra,
                    "rss_end_kib": rb,
                    "accepted_start": first.get("accepted"),
                    "accepted_end": last.get("accepted"),
                }
                growth_rows.append(
                    [
                        kind,
                        fmt(a / 1024, 1),
                        fmt(b / 1024, 1),
                        fmt((b - a) / 1024, 1),
                        fmt(ra / 1024, 1),
                        fmt(rb / 1024, 1),
                    ]
                )
        e2e_peaks = self.results.get("e2e", {}).get("figures", {}).get("memory_peaks", {})
        run_peaks = sampler.peaks()
        peak_rows = []
        for kind in sorted(set(e2e_peaks) | set(run_peaks)):
            e, g = e2e_peaks.get(kind), run_peaks.get(kind)
            peak_rows.append(
                [
                    kind,
                    e["count"] if e else (g["count"] if g else "–"),
                    fmt(e["hwm_kib"] / 1024, 1) if e else "–",
                    fmt(e["pss_total_kib"] / 1024, 1) if e else "–",
                    fmt(g["hwm_kib"] / 1024, 1) if g else "–",
                    fmt(g["pss_total_kib"] / 1024, 1) if g else "–",
                ]
            )
        self.reset_data()
        figures = {
            "events": total,
            "requests": r["requests"],
            "rps": r["rps"],
            "errors": r["errors"],
            "handed_off": handed,
            "analysed": analysed,
            "growth": growth,
            "e2e_peaks": e2e_peaks,
            "run_peaks": run_peaks,
            "series": series,
        }
        md = (
            "Peak memory per process kind, from /proc/PID/status (VmHWM: the largest resident "
            "set one process of that kind reached) and /proc/PID/smaps_rollup (PSS summed over "
            "all processes of the kind: shared pages counted once, the honest total). "
            "Sampled every second during scenario 4 and during a run of "
            f"{total:,} reviews posted by wrk (16 connections) with the relay and "
            f"{self.q_workers} qcluster workers (fake LLM at ~2 s, as in scenarios 1–3) running "
            "at the same time.\n\n"
            + table(
                [
                    "process kind",
                    "processes",
                    "scenario 4: peak VmHWM of one, MiB",
                    "scenario 4: peak PSS of all, MiB",
                    f"{total:,}-review run: peak VmHWM, MiB",
                    f"{total:,}-review run: peak PSS of all, MiB",
                ],
                peak_rows,
            )
            + (
                f"\n\nThe run stopped at its time cap of {p['max_s']} s, before {total:,} reviews."
                if r["requests"] < total
                else ""
            )
            + f"\n\nGrowth over the {total:,}-review run ({r['requests']:,} requests at "
            f"{r['rps']:.0f}/s, {r['errors']} errors; relay handed off {handed:,} events; "
            f"workers analysed {analysed:,} reviews meanwhile), from the sample after the first "
            "10 % of the run to the last one:\n\n"
            + table(
                [
                    "process kind",
                    "PSS start MiB",
                    "PSS end MiB",
                    "PSS growth MiB",
                    "RSS start MiB",
                    "RSS end MiB",
                ],
                growth_rows,
            )
            + "\n\nqcluster workers are recycled after 500 tasks (Q_CLUSTER recycle), which "
            "bounds their growth by design."
        )
        return {"md": md, "figures": figures}

    # 7 ------------------------------------------------------------------------------------
    def sc_workers(self) -> dict:
        p = self.p["workers"]
        self.begin()
        self.start_fake()
        self.start_relay()
        self.fake(latency_ms=1000)
        rows, figures = [], {}
        for batch in sorted(p["batches"], reverse=True):
            if self.qcluster_batch != batch or self.qcluster_nice != self.worker_nice:
                self.stop("qcluster")
            self.reset_data()  # the previous window's backlog must not reach this cluster
            self.start_qcluster(batch_size=batch)  # warmed before any review exists
            self.reset_data()
            fake0 = self.fake_stats()["calls"]
            sampler = self.sampler(interval=1.0, snapshot=False)
            sampler.start()
            self.preload_reviews(p["preload"])
            wait_for(
                lambda: self.scalar(
                    "SELECT count(*) FROM reviews_review WHERE analysis_status='done'"
                )
                > 0,
                60,
                "the first analysis",
            )
            time.sleep(1.0)  # let every worker get going
            t0 = time.time()
            d0 = self.scalar("SELECT count(*) FROM reviews_review WHERE analysis_status='done'")
            end = time.monotonic() + p["window_s"]
            while time.monotonic() < end:
                time.sleep(min(2.0, max(0.0, end - time.monotonic())))
                say(
                    f"  batch {batch}: "
                    f"{self.scalar('SELECT count(*) FROM reviews_review WHERE analysis_status=%s', ['done']) - d0} "
                    "analysed in the window so far"
                )
            t1 = time.time()
            d1 = self.scalar("SELECT count(*) FROM reviews_review WHERE analysis_status='done'")
            sampler.stop()
            calls = self.sql(
                "SELECT count(*), coalesce(sum(batch_size), 0), coalesce(sum(prompt_tokens), 0),"
                " coalesce(sum(completion_tokens), 0), coalesce(avg(latency_ms), 0)"
                " FROM aiworker_llmcall WHERE status = 'ok'"
                " AND created_at >= to_timestamp(%s) AND created_at < to_timestamp(%s)",
                [t0, t1],
            )[0]
            all_calls = self.sql(
                "SELECT count(*), coalesce(sum(batch_size), 0), coalesce(sum(prompt_tokens), 0)"
                " FROM aiworker_llmcall WHERE status = 'ok'"
            )[0]
            fake_calls = self.fake_stats()["calls"] - fake0
            self.stop("qcluster")
            rate = (d1 - d0) / (t1 - t0)
            reviews_in_calls = all_calls[1] or 1
            peaks = sampler.peaks()
            cluster_pss = sum(
                v["pss_total_kib"] for k, v in peaks.items() if k.startswith("qcluster")
            )
            figures[str(batch)] = {
                "analysed_per_s": rate,
                "window_s": round(t1 - t0, 1),
                "analysed_in_window": d1 - d0,
                "calls_in_window": calls[0],
                "requests_per_review": all_calls[0] / reviews_in_calls,
                "input_tokens_per_review": all_calls[2] / reviews_in_calls,
                "mean_batch": reviews_in_calls / (all_calls[0] or 1),
                "mean_latency_ms": float(calls[4]),
                "fake_calls": fake_calls,
                "ok_calls": all_calls[0],
                "reviews_in_calls": all_calls[1],
                "peaks": peaks,
                "cluster_pss_kib": cluster_pss,
            }
            rows.append(
                [
                    batch,
                    self.q_workers,
                    fmt(rate, 1),
                    figures[str(batch)]["window_s"],
                    fmt(figures[str(batch)]["mean_batch"], 2),
                    fmt(figures[str(batch)]["requests_per_review"], 3),
                    fmt(figures[str(batch)]["input_tokens_per_review"], 0),
                    fmt(peaks.get("qcluster worker", {}).get("hwm_kib", 0) / 1024, 0),
                    fmt(cluster_pss / 1024, 0),
                ]
            )
        self.reset_data()
        self.fake(latency_ms=1800, jitter_ms=400)
        b1, b10 = figures.get("1"), figures.get("10")
        targets = {}
        if b1 and b10:
            req_x = b1["requests_per_review"] / b10["requests_per_review"]
            tok_saving = 1 - b10["input_tokens_per_review"] / b1["input_tokens_per_review"]
            figures["fewer_requests_x"] = req_x
            figures["input_token_saving"] = tok_saving
            targets = {
                "ge_50_per_s": b10["analysed_per_s"] >= 50,
                "ge_5x_fewer_requests": req_x >= 5,
                "ge_40pct_fewer_input_tokens": tok_saving >= 0.40,
            }
        figures["targets"] = targets
        md = (
            f"A qcluster starts (warmed), then {p['preload']:,} pending reviews of "
            f"{RESTAURANTS} restaurants and their events are inserted at once and the relay "
            "hands them off; reviews analysed per second are counted over a "
            f"{p['window_s']} s window once analyses flow. The fake LLM takes 1 s per call. "
            "Requests and input tokens per review come from the LLM call ledger (LlmCall: "
            "calls, batch_size, prompt_tokens reported by the provider).\n\n"
            + table(
                [
                    "LLM_BATCH_SIZE",
                    "Q_WORKERS",
                    "analysed /s",
                    "window s",
                    "reviews per call",
                    "requests per review",
                    "input tokens per review",
                    "peak VmHWM of one worker MiB",
                    "cluster peak PSS MiB",
                ],
                sorted(rows, key=lambda r: r[0]),
            )
        )
        if targets:
            md += (
                f"\n\nBatch 10 vs 1: {figures['fewer_requests_x']:.1f}× fewer provider requests "
                f"per review (target ≥ 5×: {verdict(targets['ge_5x_fewer_requests'])}), "
                f"{figures['input_token_saving'] * 100:.0f} % fewer input tokens per review "
                f"(target ≥ 40 %: {verdict(targets['ge_40pct_fewer_input_tokens'])}); "
                f"{b10['analysed_per_s']:.1f} reviews/s with batch 10 and {self.q_workers} "
                f"workers (target ≥ 50/s: {verdict(targets['ge_50_per_s'])})."
            )
        return {"md": md, "figures": figures}

    # 6 ------------------------------------------------------------------------------------
    def sc_relay(self) -> dict:
        p = self.p["relay"]
        self.begin()
        self.stop("qcluster")  # the queue must not be consumed while relays fill it
        self.stop("relay")
        self.reset_data()
        n = p["events"]
        plen = len(self._package_sample())
        runs: dict[str, list[dict]] = {"one relay": [], "two relays": [], "raw SQL": []}
        if p["batch_2000"]:
            runs["one relay, batch 2000"] = []
        for v in p["variants"]:
            runs[f"variant {v}"] = []
        for rep in range(p["reps"]):
            for name in runs:
                self.load_events(n)
                if name == "raw SQL":
                    transactions = -(-n // 500)
                    r = self.pgbench(
                        BENCH / "relay_raw.sql",
                        clients=1,
                        transactions=transactions,
                        defines={"batch": 500, "plen": plen},
                    )
                    # pgbench's tps excludes connecting; n events took transactions / tps.
                    res = {
                        "events_per_s": n * r["tps"] / transactions,
                        "tps": r["tps"],
                        "wall_s": r["wall_s"],
                    }
                else:
                    count = 2 if name == "two relays" else 1
                    variant = name.removeprefix("variant ") if name.startswith("variant") else "app"
                    batch = 2000 if name.endswith("batch 2000") else 500
                    res = self.relay_drive(count=count, variant=variant, batch_size=batch)
                ok = self._check_handoff(n)
                res["exactly_once"] = ok
                runs[name].append(res)
                say(
                    f"  {name} (run {rep + 1}/{p['reps']}): {res['events_per_s']:,.0f} events/s"
                    f"{'' if ok else ' — HAND-OFF CHECK FAILED'}"
                )
        # Where the time goes, and the claim query's plan, on the same table.
        profile = {}
        if p["profile"]:
            self.load_events(n)
            profile = self.relay_drive(count=1, variant="app", profile=True)
        self.load_events(n)
        plan = self.explain_claim()
        rates = {name: spread([r["events_per_s"] for r in rs]) for name, rs in runs.items()}
        raw = rates["raw SQL"]["median"]
        one = rates["one relay"]["median"]
        # Lag at a steady rate, through the real relay command.
        self.reset_data()
        lag = self.relay_lag(rate=p["lag_rate"], duration=p["lag_s"])
        self.reset_data()
        rows = []
        for name, s in rates.items():
            rows.append(
                [
                    name,
                    fmt_spread(s, 0),
                    fmt(s["median"] / raw * 100, 0) + " %",
                    "yes" if all(r["exactly_once"] for r in runs[name]) else "**no**",
                ]
            )
        lag_d = dist(lag["lags_ms"])
        figures = {
            "events": n,
            "batch_size": 500,
            "payload_chars": plen,
            "runs": runs,
            "rates": rates,
            "one_relay_share_of_raw": one / raw if raw else None,
            "profile_top": profile.get("profile_top"),
            "claim_plan": plan,
            "lag": {k: v for k, v in lag.items() if k != "lags_ms"} | {"dist_ms": lag_d},
            "targets": {
                "one_relay_ge_50pct_raw": bool(raw) and one / raw >= 0.5,
                "lag_p99_le_50ms": lag_d["p99"] <= 50 and lag["sent"] > 0,
            },
        }
        md = (
            f"{n:,} unpublished `reviews.created` events are loaded before each measurement; "
            "the relay's own `relay_once` (outbox/relay.py, batch 500, no backpressure: nothing "
            "consumes the queue) runs in a loop in a "
            "process that started Django before the clock (bench/relay_drive.py); two relays "
            "start at the same instant. The raw-SQL reference does the same claim → insert "
            "queue rows → mark published in one statement per batch of 500 "
            f"(bench/relay_raw.sql via pgbench, queue payloads padded to {plen} characters, "
            "the length of a real signed package). Variants are private copies of relay_once "
            "with one change each (bench/relay_variants.py). Every run is checked: each event "
            "published once with exactly one queue row.\n\n"
            + table(
                [
                    "hand-off",
                    f"events/s: median [min–max] of {p['reps']}",
                    "share of raw SQL",
                    "exactly once",
                ],
                rows,
            )
            + f"\n\nOne relay reaches **{one / raw * 100:.0f} %** of the raw-SQL rate (target "
            f"≥ 50 %: {verdict(figures['targets']['one_relay_ge_50pct_raw'])}).\n\n"
            f"Commit → enqueued lag at a steady {p['lag_rate']} events/s for {p['lag_s']} s "
            "(one event per transaction with NOTIFY, the real `relay_outbox` command with "
            "`RELAY_QUEUE_MAX=0` since no qcluster consumes the queue here; lag = "
            "when the relay's transaction commit notified a listener − when the producer's "
            f"COMMIT returned): p50 {lag_d['p50']:.1f} ms, p99 **{lag_d['p99']:.1f} ms**, max "
            f"{lag_d['max']:.1f} ms over {lag_d['n']:,} events in {lag['batches']} relay "
            f"batches (target p99 ≤ 50 ms: {verdict(figures['targets']['lag_p99_le_50ms'])}).\n\n"
            + (
                "Profile of one relay over the loaded table (cProfile, top functions by own "
                f"time):\n\n```\n{profile['profile_top'].strip()}\n```\n\n"
                if profile.get("profile_top")
                else "(No profile in quick mode.)\n\n"
            )
            + f"Plan of the claim query (EXPLAIN ANALYZE, batch 500, {n:,} unpublished events):"
            f"\n\n```\n{plan.strip()}\n```"
        )
        return {"md": md, "figures": figures}

    def _package_sample(self) -> str:
        import uuid

        from outbox.relay import TaskPacker

        return TaskPacker().pack(
            func="aiworker.tasks.analyze_event",
            event_ids=[str(uuid.uuid4())],
            topic="reviews.created",
        )

    def _check_handoff(self, n: int) -> bool:
        published, unpublished, handoffs = self.sql(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),"
            " count(*) FILTER (WHERE published_at IS NULL), coalesce(max(handoffs), 0)"
            " FROM outbox_outboxevent"
        )[0]
        rows = self.scalar("SELECT count(*) FROM django_q_ormq")
        return published == n and unpublished == 0 and handoffs == 1 and rows == n

    def relay_drive(
        self, *, count: int, variant: str, batch_size: int = 500, profile: bool = False
    ) -> dict:
        start_at = time.time() + 2.0
        procs, outs = [], []
        for i in range(count):
            out = LOGS / f"relay-drive-{variant}-{i}.json"
            argv = [
                PY,
                str(BENCH / "relay_drive.py"),
                "--variant",
                variant,
                "--batch-size",
                str(batch_size),
                "--start-at",
                f"{start_at:.3f}",
                "--out",
                str(out),
            ]
            if profile:
                argv += ["--profile", str(LOGS / "relay-profile.txt")]
            self.note(f"relay drive ({variant})", ["python", *argv[1:6], "…"])
            procs.append(subprocess.Popen(argv, env=self.env, cwd=ROOT))
            outs.append(out)
        for proc in procs:
            if proc.wait(timeout=600) != 0:
                raise RuntimeError("relay_drive failed")
        data = [json.loads(o.read_text()) for o in outs]
        events = sum(d["events"] for d in data)
        seconds = max(d["ended"] for d in data) - min(d["started"] for d in data)
        res = {
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "per_process": [d["events"] for d in data],
        }
        if profile:
            text = (LOGS / "relay-profile.txt").read_text()
            res["profile_top"] = _profile_excerpt(text)
        return res

    def explain_claim(self) -> str:
        import psycopg

        from outbox.relay import CLAIM_SQL

        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + CLAIM_SQL, [500])
            plan = "\n".join(r[0] for r in rows.fetchall())
            conn.rollback()
        return plan

    def relay_lag(self, *, rate: float, duration: float) -> dict:
        self.sql(
            """
            CREATE TABLE IF NOT EXISTS bench_handoff (event_id uuid, txid bigint);
            TRUNCATE bench_handoff;
            CREATE OR REPLACE FUNCTION bench_handoff_fn() RETURNS trigger AS $$
            BEGIN
                INSERT INTO bench_handoff (event_id, txid)
                SELECT n.id, txid_current() FROM n JOIN o ON o.id = n.id
                WHERE o.published_at IS NULL AND n.published_at IS NOT NULL;
                IF FOUND THEN
                    PERFORM pg_notify('bench_handoff', txid_current()::text);
                END IF;
                RETURN NULL;
            END $$ LANGUAGE plpgsql;
            DROP TRIGGER IF EXISTS bench_handoff_trg ON outbox_outboxevent;
            CREATE TRIGGER bench_handoff_trg AFTER UPDATE ON outbox_outboxevent
                REFERENCING OLD TABLE AS o NEW TABLE AS n
                FOR EACH STATEMENT EXECUTE FUNCTION bench_handoff_fn();
            """,
            fetch=False,
        )
        try:
            # No qcluster runs here: without a consumer, backpressure would hold the relay.
            self.start_relay(queue_max=0)
            time.sleep(2.0)  # Django up, LISTEN connected
            out = LOGS / "relay-lag.json"
            argv = [
                PY,
                str(BENCH / "lagprobe.py"),
                "--dsn",
                self.db_url,
                "--rate",
                str(rate),
                "--duration",
                str(duration),
                "--out",
                str(out),
            ]
            self.note("lag probe", ["python", *argv[1:3], "DBURL", *argv[4:-2]])
            self.commands["lag probe"] = self.commands["lag probe"].replace(
                "DBURL", "$DATABASE_URL"
            )
            say(f"  {rate:g} events/s for {duration:g} s through relay_outbox …")
            subprocess.run(argv, check=True, timeout=duration + 120, env=self.env)
            return json.loads(out.read_text())
        finally:
            self.stop("relay")
            self.sql(
                "DROP TRIGGER IF EXISTS bench_handoff_trg ON outbox_outboxevent;"
                " DROP FUNCTION IF EXISTS bench_handoff_fn(); DROP TABLE IF EXISTS bench_handoff;",
                fetch=False,
            )

    # ------------------------------------------------------------------ report

    def machine(self) -> dict:
        cpu = ""
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = ""
        with contextlib.suppress(OSError):
            kib = int(Path("/proc/meminfo").read_text().split()[1])
            mem = f"{kib / 1024 / 1024:.0f} GiB"
        import django
        import gunicorn

        def version(cmd: list[str]) -> str:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                return "not found"

        return {
            "cores": os.cpu_count(),
            "cpu": cpu,
            "memory": mem,
            "kernel": platform.release(),
            "python": platform.python_version(),
            "postgresql": self.scalar("SHOW server_version"),
            "pg_settings": {
                name: self.scalar(f"SHOW {name}")
                for name in ("shared_buffers", "synchronous_commit", "max_connections")
            },
            "django": django.get_version(),
            "gunicorn": gunicorn.__version__,
            "wrk": version(["wrk", "--version"]).split(" [")[0],
            "pgbench": version(["pgbench", "--version"]),
        }


STAGE_NAMES = {
    "outbox": "outbox wait (commit → handed off)",
    "queue": "queue + batch-fill wait",
    "provider": "provider call",
    "writeback": "write-back",
    "total": "total (commit → analysis saved)",
}


def _profile_excerpt(text: str) -> str:
    """The 'by own time' table of a pstats print, paths shortened."""
    lines = text.splitlines()
    out, started = [], False
    for line in lines:
        if "ncalls" in line and "tottime" in line:
            if started:
                break
            started = True
        if started:
            if not line.strip() and len(out) > 2:
                break
            out.append(line)
    short = []
    for line in out:
        line = re.sub(r"\S*/site-packages/", "", line)
        line = re.sub(r"\S*/lib/python3\.\d+/", "", line)
        short.append(line.replace(str(ROOT) + "/", ""))
    return "\n".join(short[:20])


class Sampler:
    """Samples RSS/PSS per process kind and (optionally) the pipeline snapshot in a thread."""

    def __init__(self, bench: Bench, *, interval: float, snapshot: bool) -> None:
        self.bench = bench
        self.interval = interval
        self.snapshot = snapshot
        self.series: list[dict] = []
        self._peak_hwm: dict[str, int] = {}
        self._peak_pss: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._cpu_first: dict[int, float] = {}  # pid -> CPU seconds when first seen
        self._cpu_last: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds)
        self._first_pids: set[int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def peaks(self) -> dict[str, dict]:
        return {
            k: {
                "hwm_kib": self._peak_hwm[k],
                "pss_total_kib": self._peak_pss.get(k, 0),
                "count": self._count.get(k, 0),
            }
            for k in self._peak_hwm
        }

    def cpu(self) -> dict[str, float]:
        """CPU seconds used per process kind while sampling.

        A process first seen after the first sample (a new PostgreSQL backend, a recycled
        worker) counts from zero; one that exited between samples loses its last interval.
        """
        out: dict[str, float] = {}
        for pid, (kind, last) in self._cpu_last.items():
            start = self._cpu_first[pid] if pid in (self._first_pids or set()) else 0.0
            out[kind] = out.get(kind, 0.0) + max(0.0, last - start)
        return out

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.is_set():
                self._sample()
                self._stop.wait(self.interval)
            self._sample()
        finally:
            connection.close()

    def _sample(self) -> None:
        row: dict = {"t": round(time.monotonic() - self._t0, 1), "rss": {}, "pss": {}}
        counts: dict[str, int] = {}
        try:
            kinds = self.bench.kinds(extra=True)
        except Exception:
            kinds = {}
        for pid, kind in kinds.items():
            cpu = stack.cpu_seconds([pid])
            self._cpu_first.setdefault(pid, cpu)
            self._cpu_last[pid] = (kind, cpu)
        if self._first_pids is None:
            self._first_pids = set(kinds)
        for pid, kind in kinds.items():
            if kind in ("postgres (bench db)", "fake LLM", "load generator"):
                continue
            mem = memory_kib(pid)
            if mem is None:
                continue
            rss, hwm, pss = mem
            row["rss"][kind] = row["rss"].get(kind, 0) + rss
            row["pss"][kind] = row["pss"].get(kind, 0) + pss
            counts[kind] = counts.get(kind, 0) + 1
            self._peak_hwm[kind] = max(self._peak_hwm.get(kind, 0), hwm)
        for kind, total in row["pss"].items():
            self._peak_pss[kind] = max(self._peak_pss.get(kind, 0), total)
            self._count[kind] = max(self._count.get(kind, 0), counts[kind])
        if self.snapshot:
            try:
                from aiworker import pipeline

                snap = pipeline.snapshot()
                row.update(
                    unpublished=snap["outbox"]["unpublished"],
                    queue_depth=snap["queue"]["depth"],
                    queue_taken=snap["queue"]["taken"],
                    pending=snap["reviews"].get("pending", 0),
                    done=snap["reviews"].get("done", 0),
                    accepted=sum(snap["reviews"].values()),
                )
            except Exception as exc:  # a sample lost to a truncate is not worth a crash
                row["snapshot_error"] = exc.__class__.__name__
        self.series.append(row)


# ---------------------------------------------------------------------- report writing


def write_report(bench: Bench, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / ("BENCHMARKS.md" if out_dir == DOCS else "BENCHMARKS-quick.md")
    json_path = out_dir / ("benchmarks.json" if out_dir == DOCS else "benchmarks-quick.json")
    previous = {}
    if json_path.exists():
        with contextlib.suppress(ValueError):
            previous = json.loads(json_path.read_text())
    scenarios = dict(previous.get("scenarios", {}))
    commands = dict(previous.get("commands", {}))
    for name, result in bench.results.items():
        scenarios[name] = result
    commands.update(bench.commands)
    rerender = not bench.results and "last_run" in previous  # --report-only
    data = {
        "generated": previous["generated"] if rerender else now_iso(),
        "machine": previous["machine"] if rerender else bench.machine(),
        "last_run": previous["last_run"]
        if rerender
        else {
            "mode": bench.mode,
            "scenarios": list(bench.results),
            "load_at_start": [round(x, 2) for x in bench.load_start],
            "seconds": round(bench.total_s, 1),
            "argv": sys.argv[1:],
        },
        "settings": {
            "web": WEB,
            "sync_web": SYNC_WEB,
            "q_workers": bench.q_workers,
            "llm_batch_size": 10,
            "restaurants": RESTAURANTS,
        },
        "commands": commands,
        "scenarios": scenarios,
    }
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    hand = _hand_written(md_path)
    m = data["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` (`make bench`); every figure below comes from a run on the "
        "machine described here, never typed in. Raw figures: "
        f"`{json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path.name}`. "
        "Re-run one scenario with "
        "`make bench BENCH_ARGS='--only relay'` (names: " + ", ".join(SCENARIOS) + "); "
        "`make bench QUICK=1` runs every scenario briefly (< 2 min) and writes "
        "`bench/.out/BENCHMARKS-quick.md` instead of this file.",
        "",
        "## Machine",
        "",
        table(
            ["", ""],
            [
                ["cores", m["cores"]],
                ["CPU", m["cpu"] or "?"],
                ["memory", m["memory"]],
                ["kernel", m["kernel"]],
                ["Python", m["python"]],
                [
                    "PostgreSQL",
                    f"{m['postgresql']} (same machine; "
                    + ", ".join(f"{k}={v}" for k, v in m["pg_settings"].items())
                    + ")",
                ],
                ["Django / gunicorn", f"{m['django']} / {m['gunicorn']}"],
                ["load generators", f"{m['wrk']}; {m['pgbench']}; bench/loadgen.py (asyncio)"],
                [
                    "last run",
                    f"{data['generated']}, {data['last_run']['mode']} mode, "
                    f"{', '.join(data['last_run']['scenarios'])}; 1/5/15-min load average at "
                    "its start: "
                    + " / ".join(f"{x:.2f}" for x in data["last_run"]["load_at_start"])
                    + f"; took {data['last_run']['seconds'] / 60:.1f} min (each section "
                    "below gives its own date and load)",
                ],
            ],
        ),
        "",
        "Everything (web, relay, workers, PostgreSQL, fake LLM and the load generators) "
        "shares the same 2 cores, so the load generator's own CPU is part of every figure. "
        "Settings: `settings.prod` with DEBUG=False, `API_REVIEW_RATE=off` (the per-token "
        "limit would cap the load generator's single token), SECURE_SSL_REDIRECT=false (plain "
        f"HTTP on loopback); gunicorn gthread {WEB['workers']} workers × {WEB['threads']} "
        f"threads (sync mode: {SYNC_WEB['workers']} × {SYNC_WEB['threads']}); "
        f"Q_WORKERS={bench.q_workers}; LLM_BATCH_SIZE=10; the fake LLM "
        "(`manage.py fake_llm`) as the OpenAI-compatible provider through the real SDK.",
        "",
    ]
    summary_rows = _summary_rows(scenarios)
    if summary_rows:
        lines += [
            "## Targets",
            "",
            table(["scenario", "target", "result", "run"], summary_rows),
            "",
        ]
    for name in REPORT_ORDER:
        if name not in scenarios:
            continue
        r = scenarios[name]
        lines += [
            f"## {TITLES[name]}",
            "",
            f"*{r.get('mode', '?')} run, {r.get('date', '?')}, {r.get('seconds', 0):.0f} s, "
            f"1-min load before it {r.get('load_at_start', '?')}*",
            "",
            r["md"] + _extra_md(name, r, scenarios),
            "",
        ]
    lines += ["## Commands", "", "```"]
    lines += [
        "make bench            # every scenario, full (~20 min)",
        "make bench QUICK=1    # every scenario, briefly (< 2 min)",
        "make bench-relay      # scenario 6 only",
    ]
    shown = (
        "DJANGO_SETTINGS_MODULE",
        "DATABASE_URL",
        "DEBUG",
        "ALLOWED_HOSTS",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "API_REVIEW_RATE",
        "ANALYZER",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "REVIEWS_ANALYSIS_MODE",
        "LLM_BATCH_SIZE",
        "Q_WORKERS",
        "LOG_LEVEL",
    )
    env = " ".join(f"{k}={bench.env[k]}" for k in shown if k in bench.env)
    env = env.replace(bench.db_url, "$DATABASE_URL")
    lines += [f"# environment of every process (plus a random SECRET_KEY of 70 characters)\n{env}"]
    lines += [
        f"# {name}\n{cmd.replace(repr(bench.db_url), '$DATABASE_URL')}"
        for name, cmd in sorted(commands.items())
    ]
    lines += ["```", "", HAND_BEGIN, hand.strip(), HAND_END, ""]
    md_path.write_text("\n".join(lines))
    return md_path, json_path


def _extra_md(name: str, result: dict, scenarios: dict) -> str:
    """Tables rendered from the JSON at report time (so older runs get them too)."""
    if name != "e2e":
        return ""
    peaks = result.get("figures", {}).get("memory_peaks") or {}
    if not peaks:
        return ""
    rows = [
        [kind, v["count"], fmt(v["hwm_kib"] / 1024, 1), fmt(v["pss_total_kib"] / 1024, 1)]
        for kind, v in sorted(peaks.items())
    ]
    return "\n\nPeak memory during this scenario (scenario 5 explains the columns):\n\n" + table(
        ["process kind", "processes", "peak VmHWM of one, MiB", "peak PSS of all, MiB"], rows
    )


TARGET_TEXT = {
    ("sync_async", "async_p99_le_15ms"): "async POST p99 ≤ 15 ms, 0 errors",
    ("sync_async", "ratio_ge_100"): "sync/async p99 ≥ 100×",
    ("ai_down", "async_unchanged_0_errors"): "async POST unchanged, 0 errors, AI down",
    ("max_rate", "ge_1000_per_s"): "≥ 1,000 accepted reviews/s (p99 ≤ 50 ms)",
    ("e2e", "p99_le_1s_at_0ms"): "commit → analysis p99 ≤ 1 s (fake at 0 ms)",
    ("relay", "one_relay_ge_50pct_raw"): "one relay ≥ 50 % of raw SQL",
    ("relay", "lag_p99_le_50ms"): "commit → enqueued p99 ≤ 50 ms at 500/s",
    ("workers", "ge_50_per_s"): "≥ 50 reviews/s analysed (fake 1 s)",
    ("workers", "ge_5x_fewer_requests"): "batch 10: ≥ 5× fewer requests/review",
    ("workers", "ge_40pct_fewer_input_tokens"): "batch 10: ≥ 40 % fewer input tokens/review",
}


def _summary_rows(scenarios: dict) -> list[list[str]]:
    rows = []
    for name in REPORT_ORDER:
        r = scenarios.get(name)
        if not r:
            continue
        for key, ok in r["figures"].get("targets", {}).items():
            rows.append(
                [
                    TITLES[name].split(" ", 1)[0].rstrip("."),
                    TARGET_TEXT.get((name, key), key),
                    verdict(ok),
                    f"{r.get('mode')}, {r.get('date', '')[:10]}",
                ]
            )
    return rows


def _hand_written(md_path: Path) -> str:
    default = (
        "## What profiling found (hand-written)\n\n"
        "(Kept between these markers when the file is regenerated.)"
    )
    if not md_path.exists():
        legacy = DOCS / "BENCHMARKS.md"
        if md_path != legacy and legacy.exists():
            md_path = legacy
        else:
            return default
    text = md_path.read_text()
    if HAND_BEGIN in text and HAND_END in text:
        return text.split(HAND_BEGIN, 1)[1].split(HAND_END, 1)[0]
    return default


# ---------------------------------------------------------------------- main


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(SCENARIOS)
    names = []
    for raw in value.split(","):
        name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {raw!r}; known: {', '.join(SCENARIOS)}")
        names.append(name)
    return names


def wait_idle(threshold: float, max_wait: float) -> None:
    deadline = time.monotonic() + max_wait
    while True:
        load = os.getloadavg()[0]
        if load < threshold or time.monotonic() >= deadline:
            if load >= threshold:
                say(f"1-min load still {load:.2f} after {max_wait:.0f} s; running anyway")
            return
        say(f"1-min load {load:.2f} ≥ {threshold}: waiting for the machine to calm down …")
        time.sleep(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every scenario briefly (< 2 min)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--out", help="directory for BENCHMARKS*.md and .json")
    parser.add_argument("--q-workers", type=int, default=Q_WORKERS)
    parser.add_argument(
        "--relay-queue-max",
        type=int,
        help="RELAY_QUEUE_MAX for the stack (default: the app's, 4 × Q_WORKERS; 0: off)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="start the qcluster under `nice -n N` (scenario 1's nice row always uses 10)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the Markdown from the JSON of earlier runs (keeps the hand-written part)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to this long for a 1-min load average below 1.0",
    )
    args = parser.parse_args()
    names = parse_only(args.only)
    if args.report_only:
        out_dir = Path(args.out).resolve() if args.out else (QUICK_OUT if args.quick else DOCS)
        bench = Bench(args)
        bench.total_s = 0.0
        md, _ = write_report(bench, out_dir)
        say(f"re-rendered {md}")
        return 0
    if args.wait_idle:
        wait_idle(1.0, args.wait_idle)
    out_dir = Path(args.out).resolve() if args.out else (QUICK_OUT if args.quick else DOCS)
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = None
    try:
        bench.run(names)
    except BaseException as exc:  # SIGTERM (SystemExit) and Ctrl-C too: keep what was measured
        failed = exc
        say(f"\nbenchmark stopped in {bench.stage or 'setup'}: {exc!r}")
        for name in list(bench.procs.procs):
            tail = bench.procs.log_tail(name, 8)
            if tail:
                say(f"--- last lines of {name}.log ---\n{tail}")
    finally:
        say("stopping every process the benchmark started …")
        bench.procs.stop_all()
    if not hasattr(bench, "total_s"):
        bench.total_s = 0.0
    if bench.results:
        md, js = write_report(bench, out_dir)
        say(
            f"\nwrote {md.relative_to(ROOT) if md.is_relative_to(ROOT) else md} and "
            f"{js.relative_to(ROOT) if js.is_relative_to(ROOT) else js}"
        )
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            return 130
        if isinstance(failed, SystemExit):
            return failed.code if isinstance(failed.code, int) else 1
        raise failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
