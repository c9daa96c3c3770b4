#!/usr/bin/env python
"""`make chaos`: break the running system on purpose, then prove with the ledger that nothing
was lost or done twice.

The suite builds a private world (bench/chaos_stack.py): its own PostgreSQL cluster in a temp
directory on a free port, gunicorn serving settings.prod (DEBUG=False), relay_outbox, qcluster,
the fake OpenAI-compatible LLM as the provider and a webhook receiver, all on 127.0.0.1. A
separate load process (bench/chaos_load.py) POSTs reviews over HTTP at a steady rate while each
scenario injects its fault; then the system settles (bounded wait) and aiworker.audit checks
the ledger for the reviews of that scenario. The end is a table written to docs/RELIABILITY.md
and docs/reliability.json.

    python bench/chaos.py            # full: ~15 minutes (the LLM outage lasts 5 minutes)
    python bench/chaos.py --quick    # ~3-4 minutes, shorter faults
    python bench/chaos.py --only relay,pg_restart   # some scenarios (no docs written)

Exit status 0 when every scenario ends with lost = duplicated = 0 (and nothing unexpected).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chaos_stack import VENV_BIN, PrivatePostgres, Procs, WebhookReceiver, gunicorn_argv
from stack import ROOT, children, descendants, free_port, http_ok, wait_for

sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs"
STARTED = time.monotonic()
RNG = random.Random()
BASE_LATENCY_MS = 150


def say(message: str) -> None:
    print(f"[chaos {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Mode:
    name: str
    rate: float  # reviews per second, the steady load
    load_s: float  # how long each scenario's load lasts
    settle_s: float  # bounded wait for the system to settle after a scenario
    kills: int  # kills per kill scenario
    outage_503_s: float
    pg_outage_s: float
    idle_hold_s: float
    idle_timeout_ms: int
    runaway_budget: int  # provider requests allowed in the runaway scenario
    fuzz_examples: int


QUICK = Mode("quick", 6, 5, 40, 2, 15, 2, 15, 5000, 6, 15)
FULL = Mode("full", 8, 25, 90, 4, 300, 8, 120, 60000, 20, 60)


@dataclass
class Row:
    name: str
    title: str
    expected: str
    accepted: int = 0
    processed: int = 0
    dead_lettered: int = 0
    parked: int = 0
    in_flight: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    provider_calls: int = 0
    provider_http: int = 0
    answers: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    findings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.duplicated == 0 and self.unexpected == 0 and not self.problems
        )


class Chaos:
    def __init__(self, mode: Mode, only: set[str] | None) -> None:
        self.mode = mode
        self.only = only
        self.run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.log_dir = ROOT / "test-artifacts" / "chaos" / self.run_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self.pg: PrivatePostgres | None = None
        self.procs: Procs | None = None
        self.webhook: WebhookReceiver | None = None
        self.fake_url = ""
        self.web_url = ""
        self.meta: dict = {}

    # ------------------------------------------------------------------ setup / teardown

    def setup(self) -> None:
        say(f"mode {self.mode.name}; logs in {self.log_dir.relative_to(ROOT)}")
        self.pg = PrivatePostgres(log_dir=self.log_dir)
        self.pg.init()
        say(
            f"private PostgreSQL {self.pg.bin.parent.name} on 127.0.0.1:{self.pg.port} in {self.pg.dir}"
        )
        self.webhook = WebhookReceiver()
        fake_port, web_port = free_port(), free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}/v1"
        self.web_url = f"http://127.0.0.1:{web_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "Q_", "OPENAI_"))}
        env.update(
            DATABASE_URL=self.pg.url,
            DJANGO_SETTINGS_MODULE="settings.prod",
            SECRET_KEY=secrets.token_urlsafe(64),
            DEBUG="false",
            SECURE_SSL_REDIRECT="false",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            API_REVIEW_RATE="off",
            ANALYZER="openai",
            OPENAI_BASE_URL=self.fake_url,
            OPENAI_API_KEY="chaos-fake-key",
            LLM_TIMEOUT_S="4",
            LLM_BACKOFF_BASE_S="0.5" if self.mode.name == "quick" else "1",
            LLM_BACKOFF_MAX_S="20",
            LLM_BREAKER_COOLDOWN_S="10" if self.mode.name == "quick" else "20",
            Q_WORKERS="4",
            RELAY_HOUSEKEEPING_S="2",
            DELIVERY_DEADLINE_S="20" if self.mode.name == "quick" else "60",
            ALERT_WEBHOOK_URL=self.webhook.url,
            DB_IDLE_IN_TX_TIMEOUT_MS=str(self.mode.idle_timeout_ms),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
        )
        self.env = env
        self.procs = Procs(env, self.log_dir)
        manage = [sys.executable, str(ROOT / "manage.py")]
        for args in (["migrate", "--noinput", "-v", "0"], ["createcachetable"]):
            subprocess.run([*manage, *args], env=env, cwd=ROOT, check=True, timeout=300)
        os.environ.update(env)
        import django

        django.setup()
        self._seed()
        self.procs.manage(
            "fake_llm",
            "fake_llm",
            "--port",
            str(fake_port),
            "--force",
            "--latency-ms",
            str(BASE_LATENCY_MS),
            "--jitter-ms",
            "100",
        )
        wait_for(lambda: http_ok(f"{self.fake_url}/models"), 20, "the fake LLM")
        self.procs.start("web", gunicorn_argv(web_port, workers=3))
        wait_for(lambda: http_ok(f"{self.web_url}/healthz"), 30, "gunicorn")
        self.start_relay()
        self.start_qcluster()
        self.warm_up()
        from django.conf import settings

        self.meta = {
            "run_id": self.run_id,
            "mode": self.mode.name,
            "postgres": self.pg.bin.parent.name,
            "rate_per_s": self.mode.rate,
            "gunicorn_workers": 3,
            "q_workers": settings.Q_WORKERS,
            "llm_timeout_s": settings.LLM_TIMEOUT_S,
            "llm_max_attempts": settings.LLM_MAX_ATTEMPTS,
            "llm_backoff_base_s": settings.LLM_BACKOFF_BASE_S,
            "q_timeout_s": settings.Q_TIMEOUT_S,
            "q_retry_s": settings.Q_RETRY_S,
            "fake_latency_ms": BASE_LATENCY_MS,
            "idle_in_transaction_session_timeout_ms": self.mode.idle_timeout_ms,
        }
        say(
            f"stack up: web {self.web_url}, fake LLM {self.fake_url}, Q_TIMEOUT {settings.Q_TIMEOUT_S}s, Q_RETRY {settings.Q_RETRY_S}s"
        )

    def warm_up(self) -> None:
        """One review through the whole pipeline before any fault: every process is ready."""
        from aiworker.tests.procs import http_json
        from reviews.models import Review

        status, body = http_json(
            "POST",
            f"{self.web_url}/api/reviews/",
            {"restaurant": self.restaurants[0], "rating": 5, "text": "warm-up: tudo certo"},
            token=self.tokens["platform"],
        )
        if status != 202:
            raise RuntimeError(f"warm-up POST answered {status}: {body}")
        wait_for(
            lambda: self.db(
                lambda: Review.objects.filter(pk=body["id"], analysis_status="done").exists()
            ),
            90,
            "the warm-up review to be analysed",
            interval=0.3,
        )

    def _seed(self) -> None:
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        from reviews.models import Restaurant

        users = get_user_model().objects
        platform = users.create_user("platform", password=secrets.token_urlsafe(16))
        alice = users.create_user("alice", password=secrets.token_urlsafe(16))
        bob = users.create_user("bob", password=secrets.token_urlsafe(16))
        self.restaurants = [
            Restaurant.objects.create(name=f"Alice {i}", owner=alice).pk for i in range(3)
        ]
        self.restaurants += [
            Restaurant.objects.create(name=f"Bob {i}", owner=bob).pk for i in range(2)
        ]
        self.tokens = {u.username: Token.objects.create(user=u).key for u in (platform, alice, bob)}

    def start_relay(self) -> None:
        self.procs.manage("relay", "relay_outbox", "--poll-interval", "0.5")

    def start_qcluster(self, env: dict | None = None) -> None:
        self.procs.manage("qcluster", "qcluster", env=env)

    def teardown(self) -> None:
        say("stopping everything")
        if self.procs:
            self.procs.stop_all()
        if self.webhook:
            self.webhook.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if self.pg:
            self.pg.destroy()

    # ------------------------------------------------------------------ helpers

    def db(self, fn, attempts: int = 60):
        """Run fn against the private database, reconnecting through outages."""
        from django.db import connection
        from django.db.utils import InterfaceError, OperationalError

        for i in range(attempts):
            try:
                return fn()
            except (OperationalError, InterfaceError):
                connection.close()
                if i == attempts - 1:
                    raise
                time.sleep(0.5)
        return None

    def fake(self, **faults) -> None:
        from aiworker.fake_llm import fake_control

        fake_control(self.fake_url, **faults)

    def fake_calls(self) -> int:
        from aiworker.fake_llm import fake_stats

        return fake_stats(self.fake_url)["calls"]

    def heal(self) -> None:
        self.fake(clear=True, latency_ms=BASE_LATENCY_MS, jitter_ms=100)

    def ensure_running(self, row: Row) -> None:
        """Processes that died by themselves are a finding; restart them like a supervisor."""
        for name, start in (("relay", self.start_relay), ("qcluster", self.start_qcluster)):
            if not self.procs.alive(name):
                row.problems.append(f"{name} exited by itself (restarted by the suite)")
                start()
        if not self.procs.alive("web"):
            row.problems.append("gunicorn master exited")

    def load(self, marker: str, *, rate: float, duration: float) -> tuple[subprocess.Popen, Path]:
        out = self.log_dir / f"answers-{marker}.jsonl"
        argv = [
            sys.executable,
            str(Path(__file__).with_name("chaos_load.py")),
            "--url",
            self.web_url,
            "--token",
            self.tokens["platform"],
            "--restaurants",
            ",".join(map(str, self.restaurants)),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--marker",
            marker,
            "--out",
            str(out),
        ]
        proc = self.procs.start(f"load-{marker}", argv)
        return proc, out

    # ------------------------------------------------------------------ one scenario

    def scenario(
        self,
        name: str,
        title: str,
        expected: str,
        action=None,
        *,
        rate: float | None = None,
        duration: float | None = None,
        after=None,
        settle_s: float | None = None,
    ) -> Row:
        row = Row(name, title, expected)
        if self.only and name not in self.only:
            return row
        say(f"▶ {title}")
        started = time.monotonic()
        marker = f"{self.run_id}-{name}"
        calls_before = self.fake_calls()
        offsets = {n: self._log_size(n) for n in ("relay", "qcluster", "web")}
        duration = duration or self.mode.load_s
        proc, out = self.load(marker, rate=rate or self.mode.rate, duration=duration)
        t0 = time.time()
        try:
            if action is not None:
                action(row, t0, duration)
        except Exception as exc:
            row.problems.append(f"scenario error: {exc.__class__.__name__}: {exc}")
            traceback.print_exc()
        finally:
            try:
                proc.wait(timeout=duration + 40)
            except subprocess.TimeoutExpired:
                row.problems.append("load process did not finish")
            self.procs.kill(f"load-{marker}")
        if after is not None:
            after(row)
        self.ensure_running(row)
        answers = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        accepted, refused = self._answers(row, marker, answers, t0)
        self._recoveries(row, answers)
        report = self.settle(accepted, refused, settle_s or self.mode.settle_s, row)
        stalled = self._stalled_for()
        if report.in_flight and stalled is not None and stalled > 30:
            # django-q2 can wedge: no task finishes while the cluster looks alive. Restart it as
            # a watchdog would, then prove nothing was lost.
            row.problems.append(
                f"qcluster stalled: no task finished for {stalled:.0f}s with {report.in_flight} "
                "reviews in flight; restarted by the suite"
            )
            row.notes["stalled_cluster_wait_channels"] = dict(Counter(self._wchans()))
            self.procs.kill("qcluster")
            self.start_qcluster()
            report = self.settle(accepted, refused, settle_s or self.mode.settle_s, row)
            row.notes["settled_after_restart_s"] = row.notes.pop("settled_after_s")
        row.provider_http = self.fake_calls() - calls_before
        self._log_notes(row, offsets)
        self._fill(row, report)
        if name == "runaway" and row.parked:
            row.problems.append(f"{row.parked} reviews still parked after the budget was raised")
        row.seconds = round(time.monotonic() - started, 1)
        self.rows.append(row)
        state = "ok" if row.ok else "FAILED"
        say(
            f"  {state}: accepted {row.accepted}, processed {row.processed}, dead {row.dead_lettered}, "
            f"parked {row.parked}, lost {row.lost}, duplicated {row.duplicated}, unexpected {row.unexpected}, "
            f"calls {row.provider_calls} ({row.provider_http} HTTP) in {row.seconds:.0f}s"
            + (f"; problems: {row.problems}" if row.problems else "")
        )
        if row.notes:
            say(f"  notes: {json.dumps(row.notes, default=str)[:600]}")
        with open(self.log_dir / "rows.jsonl", "a") as f:
            f.write(json.dumps({"name": row.name, **row.__dict__}, default=str) + "\n")
        return row

    def _wchans(self) -> list[str]:
        """Where each process of the cluster sleeps in the kernel (futex = a lock, pipe = idle)."""
        out = []
        for pid in descendants(self.procs.pid("qcluster")):
            try:
                out.append(Path(f"/proc/{pid}/wchan").read_text().strip() or "running")
            except OSError:
                continue
        return out

    def _stalled_for(self) -> float | None:
        """Seconds since the qcluster last logged a finished task (None if it never did)."""
        path = self.log_dir / "qcluster.log"
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 2_000_000))
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines):
            if " Processed '" in line or " Failed '" in line:
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    continue
                return (datetime.now() - at).total_seconds()
        return None

    def _log_size(self, name: str) -> int:
        path = self.log_dir / f"{name}.log"
        return path.stat().st_size if path.exists() else 0

    def _log_notes(self, row: Row, offsets: dict[str, int]) -> None:
        """What the processes logged during the scenario, counted."""

        def new_text(name: str) -> str:
            with open(self.log_dir / f"{name}.log", "rb") as f:
                f.seek(offsets[name])
                return f.read().decode(errors="replace")

        relay, cluster, web = new_text("relay"), new_text("qcluster"), new_text("web")
        swept = sum(
            int(line.split("sweeper: ", 1)[1].split()[0])
            for line in relay.splitlines()
            if "sweeper: " in line
        )
        counts = {
            "relay_db_retries": relay.count("database unavailable"),
            "events_handed_off_again_by_sweeper": swept,
            "tasks_failed_in_django_q": cluster.count(" ERROR django-q Failed '"),
            "cluster_processes_reincarnated": cluster.count("reincarnated"),
            "web_errors_logged": web.count(" ERROR "),
        }
        row.notes.update({k: v for k, v in counts.items() if v})

    def _answers(
        self, row: Row, marker: str, answers: list[dict], t0: float
    ) -> tuple[set[int], set[int]]:
        """Match answers to committed reviews by the marker in their text."""
        from reviews.models import Review

        prefix = f"[{marker}#"
        committed = dict(
            self.db(
                lambda: [
                    (int(t[len(prefix) :].split("]", 1)[0]), pk)
                    for pk, t in Review.objects.filter(text__startswith=prefix).values_list(
                        "pk", "text"
                    )
                ]
            )
        )
        by_seq = {a["seq"]: a for a in answers}
        statuses: Counter[str] = Counter()
        accepted: set[int] = set()
        refused: set[int] = set()
        traces = unclear = 0
        for a in answers:
            status = a["status"]
            statuses["no answer" if status is None else str(status)] += 1
            if status is not None and 200 <= status < 300:
                accepted.add(a["id"])
                if committed.get(a["seq"], a["id"]) != a["id"]:
                    row.problems.append(f"answer id {a['id']} is not review {committed[a['seq']]}")
            elif status is not None:
                if a["seq"] in committed:
                    refused.add(committed[a["seq"]])
                body = a.get("body", "")
                if "Traceback" in body or 'File "' in body:
                    traces += 1
                if (status >= 500 and status != 503) or (
                    status == 503 and "unavailable" not in body.lower()
                ):
                    unclear += 1
        # An answer lost on the way (or never written): whatever was committed must end well.
        lost_answers = {
            pk
            for seq, pk in committed.items()
            if seq not in by_seq or by_seq[seq]["status"] is None
        }
        accepted |= lost_answers
        row.answers = dict(statuses)
        row.notes["answers_lost_but_committed"] = len(lost_answers)
        if traces:
            row.problems.append(f"{traces} error answers contained a stack trace")
        if unclear:
            row.problems.append(f"{unclear} error answers were not a clear 503")
        row.accepted = len(accepted)
        return accepted, refused

    def settle(self, accepted: set[int], refused: set[int], timeout: float, row: Row):
        from aiworker.audit import ledger_check

        deadline = time.monotonic() + timeout
        settled_after = None
        started = time.monotonic()
        while time.monotonic() < deadline:
            report = self.db(
                lambda: ledger_check(
                    accepted_ids=accepted, refused_ids=refused, allow_in_flight=True
                )
            )
            if report.in_flight + report.parked == 0:
                settled_after = time.monotonic() - started
                break
            time.sleep(1)
        row.notes["settled_after_s"] = (
            round(settled_after, 1) if settled_after is not None else f">{timeout:.0f}"
        )
        return self.db(
            lambda: ledger_check(
                accepted_ids=accepted, refused_ids=refused, webhook_posts=self.webhook.snapshot()
            )
        )

    def _fill(self, row: Row, report) -> None:
        row.processed, row.dead_lettered, row.parked = (
            report.processed,
            report.dead_lettered,
            report.parked,
        )
        row.in_flight = report.in_flight
        row.lost, row.duplicated, row.unexpected = report.lost, report.duplicated, report.unexpected
        row.provider_calls = report.provider_calls
        row.findings = report.kinds()
        if report.findings:
            (self.log_dir / f"findings-{row.name}.json").write_text(report.to_json())

    # ------------------------------------------------------------------ faults

    def random_moments(self, n: int, duration: float, t0: float):
        """n moments spread over the load, each at a random point of its slice."""
        for i in range(n):
            at = t0 + duration * (i + RNG.uniform(0.15, 0.85)) / n
            time.sleep(max(0.0, at - time.time()))
            yield i

    def kill_relay(self, row: Row, t0: float, duration: float) -> None:
        for _ in self.random_moments(self.mode.kills, duration, t0):
            self.procs.kill("relay")
            time.sleep(RNG.uniform(0.3, 1.5))
            self.start_relay()
        row.notes["kills"] = self.mode.kills

    def _q_workers(self) -> list[int]:
        from django_q.status import Stat

        stats = self.db(lambda: Stat.get_all())
        pids = [p for s in stats for p in (s.workers or [])]
        if pids:
            return pids
        sentinels = children(self.procs.pid("qcluster"))  # qcluster → sentinel → workers
        return [p for s in sentinels for p in children(s)]

    def kill_q_worker(self, row: Row, t0: float, duration: float) -> None:
        killed = []
        for _ in self.random_moments(self.mode.kills, duration, t0):
            workers = self._q_workers()
            if workers:
                pid = RNG.choice(workers)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        row.notes["kills"] = len(killed)

    def kill_qcluster(self, row: Row, t0: float, duration: float) -> None:
        for _ in self.random_moments(max(2, self.mode.kills // 2), duration, t0):
            self.procs.kill("qcluster")
            time.sleep(RNG.uniform(0.5, 2))
            self.start_qcluster()
        row.notes["kills"] = max(2, self.mode.kills // 2)

    def kill_gunicorn_worker(self, row: Row, t0: float, duration: float) -> None:
        killed = 0
        for _ in self.random_moments(self.mode.kills, duration, t0):
            workers = children(self.procs.pid("web"))
            if workers:
                try:
                    os.kill(RNG.choice(workers), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        row.notes["kills"] = killed

    def _recoveries(self, row: Row, answers: list[dict]) -> None:
        """After each database fault: how long until the web accepted again and the pipeline
        analysed a review submitted after the database was back; answers during the outage."""
        from reviews.models import Review

        for key, (down, back) in row.notes.pop("_faults", {}).items():
            during = Counter(
                str(a["status"] or "no answer") for a in answers if down - 0.5 <= a["sent"] <= back
            )
            if during:
                row.notes[f"{key}_answers_during"] = dict(during)
            ok_after = [a["done"] for a in answers if a["status"] == 202 and a["done"] >= back]
            row.notes[f"{key}_web_recovered_s"] = (
                round(min(ok_after) - back, 2) if ok_after else "no 2xx after"
            )
            after = datetime.fromtimestamp(back, UTC)

            def first(after=after):
                return (
                    Review.objects.filter(created_at__gte=after, analysis_status="done")
                    .order_by("analyzed_at")
                    .values_list("analyzed_at", flat=True)
                    .first()
                )

            try:
                analysed = wait_for(
                    lambda first=first: self.db(first), 30, "an analysis", interval=0.5
                )
                row.notes[f"{key}_pipeline_recovered_s"] = round(
                    (analysed - after).total_seconds(), 2
                )
            except RuntimeError:
                row.notes[f"{key}_pipeline_recovered_s"] = ">30"

    def pg_restart(self, row: Row, t0: float, duration: float) -> None:
        faults = row.notes.setdefault("_faults", {})
        time.sleep(max(0.0, t0 + duration * RNG.uniform(0.1, 0.25) - time.time()))
        say("  pg_ctl restart -m immediate")
        down = time.time()
        self.pg.restart_immediate()
        faults["restart"] = (down, time.time())
        time.sleep(max(0.0, t0 + duration * RNG.uniform(0.45, 0.6) - time.time()))
        say(f"  pg_ctl stop -m immediate; {self.mode.pg_outage_s:.0f}s outage; pg_ctl start")
        down = time.time()
        self.pg.stop_immediate()
        time.sleep(self.mode.pg_outage_s)
        self.pg.start()
        faults["outage"] = (down, time.time())
        row.notes["outage_s"] = round(time.time() - down, 1)

    def pg_terminate(self, row: Row, t0: float, duration: float) -> None:
        from django.db import connection

        terminated = 0
        faults = row.notes.setdefault("_faults", {})

        def terminate():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
                return cursor.fetchone()[0]

        for i in self.random_moments(self.mode.kills, duration, t0):
            at = time.time()
            terminated += self.db(terminate)
            faults[f"terminate{i + 1}"] = (at, time.time())
        row.notes["backends_terminated"] = terminated

    def llm_fault(self, **faults):
        def action(row: Row, t0: float, duration: float) -> None:
            self.fake(**faults)
            row.notes["fault"] = faults
            time.sleep(max(0.0, t0 + duration - time.time()))

        return action

    def llm_outage(self, row: Row, t0: float, duration: float) -> None:
        self.fake(status=503)
        row.notes["fault"] = {"status": 503, "for_s": duration}
        time.sleep(max(0.0, t0 + duration - time.time()))

    def after_heal(self, row: Row) -> None:
        self.heal()

    def after_outage(self, row: Row) -> None:
        """Heal, let the breaker/backoff settle, then replay what was dead-lettered."""
        from aiworker.models import DeadLetter
        from aiworker.services import dead_letters_replay

        self.heal()
        marker = f"[{self.run_id}-{row.name}#"
        time.sleep(5)
        letters = self.db(
            lambda: list(
                DeadLetter.objects.filter(
                    status="open", review__text__startswith=marker
                ).values_list("pk", flat=True)
            )
        )
        row.notes["dead_lettered_before_replay"] = len(letters)
        if letters:
            result = self.db(lambda: dead_letters_replay(ids=letters))
            row.notes["replayed"] = len(result.replayed)

    def runaway(self, row: Row, t0: float, duration: float) -> None:
        from django.utils import timezone

        from aiworker.models import LlmCall

        try:
            from aiworker.ledger import budget_usage
            from aiworker.services import budget_update
        except ImportError:
            budget_update = budget_usage = None
        since = timezone.now()
        if budget_update is not None:
            used = int(self.db(lambda: budget_usage())["requests_per_hour"])
            budget = used + self.mode.runaway_budget
            self.db(
                lambda: budget_update(
                    user=None, requests_per_hour=budget, tokens_per_hour=None, tokens_per_day=None
                )
            )
            row.notes["budget"] = (
                f"{self.mode.runaway_budget} more requests (override {budget}/h, {used} used in the last hour)"
            )
        else:
            row.notes["budget"] = (
                "no run-time budget (aiworker.services.budget_update) in this build"
            )
        time.sleep(max(0.0, t0 + duration - time.time()))
        time.sleep(5)  # in-flight work of the burst reaches the ledger
        paid = LlmCall.objects.filter(created_at__gte=since).exclude(
            status=LlmCall.Status.RATE_LIMITED
        )
        during = self.db(lambda: paid.count())
        row.notes["calls_while_budget_small"] = during
        row.notes["budget_respected"] = during <= self.mode.runaway_budget
        if during > self.mode.runaway_budget:
            row.problems.append(
                f"{during} provider calls with a budget of {self.mode.runaway_budget}"
            )
        if budget_update is not None:
            from reviews.models import Review

            marker = f"[{self.run_id}-{row.name}#"
            row.notes["pending_when_budget_raised"] = self.db(
                lambda: Review.objects.filter(
                    text__startswith=marker, analysis_status="pending"
                ).count()
            )
            self.db(
                lambda: budget_update(
                    user=None, requests_per_hour=None, tokens_per_hour=None, tokens_per_day=None
                )
            )

    def idle_transaction(self, row: Row, t0: float, duration: float) -> None:
        from django.db import connection

        hold = self.mode.idle_hold_s
        code = (
            "import time, django; django.setup()\n"
            "from django.db import connection, transaction\n"
            "try:\n"
            "    with transaction.atomic():\n"
            "        with connection.cursor() as c:\n"
            "            c.execute('SELECT count(*) FROM reviews_review')\n"
            "        print('holding a transaction open', flush=True)\n"
            f"        time.sleep({hold})\n"
            "    print('committed: the server let it live', flush=True)\n"
            "except Exception as exc:\n"
            "    print('ended by the server:', exc.__class__.__name__, str(exc).splitlines()[0], flush=True)\n"
        )
        env = {**self.env, "PGAPPNAME": "chaos-idle-holder"}
        holder = self.procs.start("idle-holder", [sys.executable, "-c", code], env=env)
        samples = []
        ended_at = None
        sql = (
            "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) "
            "FROM pg_stat_user_tables WHERE relname IN ('outbox_outboxevent', 'django_q_ormq')"
        )

        def sample():
            with connection.cursor() as c:
                c.execute(sql)
                tables = {r[0]: {"live": r[1], "dead": r[2], "bytes": r[3]} for r in c.fetchall()}
                c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos-idle-holder' AND state LIKE 'idle in transaction%%'"
                )
                holding = c.fetchone()[0]
                c.execute(
                    "SELECT count(*) FROM outbox_outboxevent WHERE published_at IS NULL AND available_at <= now()"
                )
                backlog = c.fetchone()[0]
                c.execute("SELECT count(*) FROM django_q_ormq")
                queue = c.fetchone()[0]
            return {
                "t": round(time.time() - t0, 1),
                "tables": tables,
                "holding": holding,
                "backlog": backlog,
                "queue": queue,
            }

        start = time.time()
        seen_holding = False
        while time.time() - start < hold + 10:
            s = self.db(sample)
            samples.append(s)
            if s["holding"]:
                seen_holding = True
            elif seen_holding and ended_at is None:
                ended_at = time.time() - start
            time.sleep(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            holder.wait(timeout=hold + 20)
        self.procs.kill("idle-holder")
        (self.log_dir / "idle-samples.json").write_text(json.dumps(samples, indent=1))

        def peak(table, key):
            return max((s["tables"].get(table, {}).get(key, 0) for s in samples), default=0)

        row.notes.update(
            held_transaction_ended_after_s=round(ended_at, 1)
            if ended_at
            else f"not ended within {hold + 10:.0f}s",
            holder_says=(self.log_dir / "idle-holder.log").read_text().strip().splitlines()[-1:],
            outbox_dead_tuples_peak=peak("outbox_outboxevent", "dead"),
            outbox_bytes_peak=peak("outbox_outboxevent", "bytes"),
            queue_dead_tuples_peak=peak("django_q_ormq", "dead"),
            queue_bytes_peak=peak("django_q_ormq", "bytes"),
            queue_dead_tuples_end=samples[-1]["tables"].get("django_q_ormq", {}).get("dead")
            if samples
            else None,
            outbox_ready_backlog_peak=max((s["backlog"] for s in samples), default=0),
            queue_rows_peak=max((s["queue"] for s in samples), default=0),
        )
        if ended_at is None:
            row.problems.append(
                "the idle transaction was not ended by idle_in_transaction_session_timeout"
            )

    # ------------------------------------------------------------------ fuzzing

    def fuzz(self) -> Row:
        row = Row(
            "fuzz",
            "API fuzzing: schemathesis against /api/schema/ (two tenants' tokens + the platform's)",
            "0 server errors; every response conforms to the schema",
        )
        if self.only and "fuzz" not in self.only:
            return row
        say(f"▶ {row.title}")
        started = time.monotonic()
        from django.utils import timezone

        since = timezone.now()
        results = {}
        for tenant in ("alice", "bob", "platform"):
            report_path = self.log_dir / f"schemathesis-{tenant}.json"
            argv = [
                str(VENV_BIN / "schemathesis"),
                "run",
                f"{self.web_url}/api/schema/",
                "--url",
                self.web_url,
                "-H",
                f"Authorization: Token {self.tokens[tenant]}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                str(self.mode.fuzz_examples),
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--seed",
                "1",
                "--report",
                "json",
                "--report-json-path",
                str(report_path),
                "--no-color",
            ]
            if not (VENV_BIN / "schemathesis").exists():
                row.problems.append("schemathesis is not installed (requirements-dev.txt)")
                break
            log = self.log_dir / f"schemathesis-{tenant}.log"
            with open(log, "wb") as out:
                proc = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=600,
                    env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
                )
            results[tenant] = self._fuzz_summary(proc.returncode, report_path, log)
            say(f"  {tenant}: {results[tenant]['summary']}")
        row.notes["schemathesis"] = results
        for tenant, r in results.items():
            if r["server_errors"]:
                row.problems.append(f"{tenant}: {r['server_errors']} server errors")
            if r["schema_violations"]:
                row.problems.append(
                    f"{tenant}: {r['schema_violations']} responses not conforming to the schema"
                )
            if r["errors"] or not r["cases"]:
                row.problems.append(
                    f"{tenant}: schemathesis did not run cleanly (exit {r['exit_code']})"
                )
        from aiworker.audit import ledger_check

        self.settle_all(since)
        report = self.db(lambda: ledger_check(since=since))
        self._fill(row, report)
        row.accepted = report.reviews
        row.seconds = round(time.monotonic() - started, 1)
        self.rows.append(row)
        return row

    def _fuzz_summary(self, code: int, report_path: Path, log: Path) -> dict:
        data = {}
        if report_path.exists():
            try:
                data = json.loads(report_path.read_text())
            except ValueError:
                data = {}
        failures = data.get("failures") or []
        by_check = {f"{f.get('code')} {f.get('title')}": f.get("count", 1) for f in failures}
        server = sum(
            f.get("count", 1)
            for f in failures
            if "server error" in str(f.get("title", "")).lower() or f.get("type") == "ServerError"
        )
        schema = sum(f.get("count", 1) for f in failures) - server
        cases = data.get("test_cases", {})
        return {
            "exit_code": code,
            "operations": data.get("operations", {}).get("tested", 0),
            "cases": cases.get("generated", 0),
            "failures_by_check": by_check,
            "failing_operations": sorted({op for f in failures for op in f.get("operations", [])}),
            "server_errors": server,
            "schema_violations": schema,
            "errors": len(data.get("errors") or []),
            "summary": f"{cases.get('generated', 0)} cases, {server} server errors, {schema} other failures"
            + (f" ({', '.join(by_check)})" if by_check else ""),
            "log": str(log.relative_to(ROOT)),
        }

    def settle_all(self, since) -> None:
        from aiworker.audit import ledger_check

        deadline = time.monotonic() + self.mode.settle_s
        while time.monotonic() < deadline:
            report = self.db(lambda: ledger_check(since=since, allow_in_flight=True))
            if report.in_flight + report.parked == 0:
                return
            time.sleep(1)

    # ------------------------------------------------------------------ the run

    def run(self) -> int:
        m = self.mode
        self.scenario("baseline", "Baseline: steady load, no fault", "every review processed once")
        self.scenario(
            "relay",
            f"kill -9 the relay ({m.kills}× at random moments, restarted)",
            "no event lost or handed off twice",
            self.kill_relay,
        )
        self.scenario(
            "q_worker",
            f"kill -9 a qcluster worker ({m.kills}× at random moments)",
            "the task is redelivered; one analysis, calls ≤ attempts",
            self.kill_q_worker,
            duration=m.load_s + 5,
        )
        self.scenario(
            "qcluster",
            "kill -9 the whole qcluster (process group), restarted",
            "redelivery after `retry`; nothing lost or paid twice",
            self.kill_qcluster,
            settle_s=m.settle_s + 60,
        )
        self.scenario(
            "gunicorn",
            f"kill -9 a gunicorn worker ({m.kills}× at random moments)",
            "requests in flight lose their answer; committed ones end well",
            self.kill_gunicorn_worker,
        )
        self.scenario(
            "pg_restart",
            f"PostgreSQL `restart -m immediate`, then a {m.pg_outage_s:.0f}s crash outage",
            "503 with a clear body during the outage, reconnect by themselves",
            self.pg_restart,
            duration=max(m.load_s, 10),
            settle_s=m.settle_s + 30,
        )
        self.scenario(
            "pg_terminate",
            f"pg_terminate_backend of every app backend ({m.kills}×)",
            "reconnect by themselves; nothing lost",
            self.pg_terminate,
            settle_s=m.settle_s + 60,
        )
        self.scenario(
            "llm_500",
            "Fake LLM: 50% of calls answer 500",
            "retries with backoff; a few dead letters at most",
            self.llm_fault(error_rate=0.5),
            after=self.after_heal,
        )
        self.scenario(
            "llm_503",
            f"Fake LLM: 503 outage for {m.outage_503_s:.0f}s",
            "breaker parks (or dead letters, replayed after)",
            self.llm_outage,
            duration=m.outage_503_s,
            after=self.after_outage,
            settle_s=m.settle_s + 30,
        )
        self.scenario(
            "llm_429",
            "Fake LLM: 429 with Retry-After: 2",
            "no attempt spent, no dead letter",
            self.llm_fault(status=429, retry_after_s=2),
            after=self.after_heal,
        )
        self.scenario(
            "llm_hang",
            "Fake LLM: calls hang 7s, past the 4s client timeout",
            "timeouts retried; no duplicate",
            self.llm_fault(hang_s=7),
            after=self.after_heal,
            settle_s=m.settle_s + 30,
        )
        self.scenario(
            "llm_truncate",
            "Fake LLM: truncated JSON",
            "dead letter at once (after one repair try), with the raw answer",
            self.llm_fault(mode="truncate"),
            duration=max(3, m.load_s / 2),
            after=self.after_heal,
        )
        self.scenario(
            "runaway",
            f"Runaway producer: 10× rate against a budget of {m.runaway_budget} requests",
            f"at most {m.runaway_budget} provider calls; the rest parked, then resumed",
            self.runaway,
            rate=m.rate * 10,
            duration=max(5, m.load_s / 2),
            settle_s=m.settle_s + 60,
        )
        self.scenario(
            "idle_tx",
            f"A session holds a transaction open ({m.idle_hold_s:.0f}s intended)",
            "ended by idle_in_transaction_session_timeout; outbox/queue stay small",
            self.idle_transaction,
            duration=m.idle_hold_s + 10,
        )
        self.fuzz()
        self.final_check()
        return 0 if all(r.ok for r in self.rows) else 1

    def final_check(self) -> None:
        from aiworker.audit import ledger_check
        from aiworker.fake_llm import fake_stats, review_digest
        from aiworker.models import LlmCall
        from reviews.models import Review

        say("▶ final ledger check over every review of the run")
        row = Row("all", "Whole run (every review, incl. fuzzing)", "lost = duplicated = 0")
        self.settle_all(None)
        report = self.db(lambda: ledger_check(webhook_posts=self.webhook.snapshot()))
        self._fill(row, report)
        row.accepted = report.reviews
        row.provider_http = self.fake_calls()
        # Every provider request the fake saw belongs to a call in the ledger: at most two
        # requests (one repair) per counted call that included the review.
        seen = fake_stats(self.fake_url)["reviews_seen"]
        calls = Counter()
        for ids in self.db(lambda: list(LlmCall.objects.values_list("review_ids", flat=True))):
            calls.update(ids or [])
        uncounted = []
        for pk, text in self.db(lambda: list(Review.objects.values_list("pk", "text"))):
            if seen.get(review_digest(text), 0) > 2 * calls[pk]:
                uncounted.append(pk)
        row.notes["reviews_with_uncounted_provider_requests"] = len(uncounted)
        if uncounted:
            row.notes["uncounted_examples"] = uncounted[:10]
        row.notes["webhook_posts"] = sum(self.webhook.snapshot().values())
        row.notes["process_starts"] = {
            k: v for k, v in self.procs.starts.items() if not k.startswith("load-")
        }
        self.rows.append(row)
        say(f"  {'ok' if row.ok else 'FAILED'}: {report.summary()}")


# ---------------------------------------------------------------------- reporting

COLUMNS = (
    "accepted",
    "processed",
    "dead-lettered",
    "parked",
    "lost",
    "duplicated",
    "unexpected",
    "provider calls",
    "HTTP to fake",
)


def table(rows: list[Row]) -> str:
    head = "| fault | " + " | ".join(COLUMNS) + " | result |"
    sep = "|---|" + "---:|" * len(COLUMNS) + "---|"
    lines = [head, sep]
    for r in rows:
        values = (
            r.accepted,
            r.processed,
            r.dead_lettered,
            r.parked,
            r.lost,
            r.duplicated,
            r.unexpected,
            r.provider_calls,
            r.provider_http,
        )
        lines.append(
            f"| {r.title} | "
            + " | ".join(str(v) for v in values)
            + f" | {'ok' if r.ok else 'FAILED'} |"
        )
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    names = ("fault", "acc", "done", "dead", "park", "lost", "dup", "unexp", "calls", "http", "")
    print("\n" + " ".join(f"{n:>6}" if i else f"{n:<14}" for i, n in enumerate(names)))
    for r in rows:
        values = (
            r.accepted,
            r.processed,
            r.dead_lettered,
            r.parked,
            r.lost,
            r.duplicated,
            r.unexpected,
            r.provider_calls,
            r.provider_http,
        )
        print(
            f"{r.name:<14} "
            + " ".join(f"{v:>6}" for v in values)
            + (
                "   ok"
                if r.ok
                else "   FAILED "
                + "; ".join(r.problems + [f"{k}={v}" for k, v in r.findings.items()])
            )
        )


def write_docs(chaos: Chaos, status: int, total_s: float) -> None:
    rows = chaos.rows
    data = {
        "meta": {
            **chaos.meta,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(total_s),
            "ok": status == 0,
        },
        "rows": [
            {
                "name": r.name,
                "fault": r.title,
                "expected": r.expected,
                "ok": r.ok,
                "accepted": r.accepted,
                "processed": r.processed,
                "dead_lettered": r.dead_lettered,
                "parked": r.parked,
                "lost": r.lost,
                "duplicated": r.duplicated,
                "unexpected": r.unexpected,
                "provider_calls": r.provider_calls,
                "provider_http_requests": r.provider_http,
                "answers": r.answers,
                "notes": r.notes,
                "problems": r.problems,
                "findings": r.findings,
                "seconds": r.seconds,
            }
            for r in rows
        ],
    }
    (DOCS / "reliability.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    from chaos_doc import render

    (DOCS / "RELIABILITY.md").write_text(render(data, table(rows)))
    say("wrote docs/RELIABILITY.md and docs/reliability.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Shorter faults (~3-4 minutes).")
    parser.add_argument("--only", help="Comma-separated scenario names; docs are not written.")
    parser.add_argument("--no-docs", action="store_true", help="Do not write docs/RELIABILITY.md.")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    RNG.seed(args.seed)
    only = set(args.only.split(",")) if args.only else None
    chaos = Chaos(QUICK if args.quick else FULL, only)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    status = 2
    try:
        chaos.setup()
        status = chaos.run()
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    except Exception:
        traceback.print_exc()
        status = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        chaos.teardown()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if chaos.rows:
        print_table(chaos.rows)
        if not only and not args.no_docs and status in (0, 1):
            write_docs(chaos, status, time.monotonic() - STARTED)
    say(
        f"done in {time.monotonic() - STARTED:.0f}s: "
        + {
            0: "lost = duplicated = 0 everywhere",
            1: "FAILED (see the table)",
            130: "interrupted",
        }.get(status, "error")
    )
    return status


if __name__ == "__main__":
    threading.current_thread().name = "chaos"
    sys.exit(main())
