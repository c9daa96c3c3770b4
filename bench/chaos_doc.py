"""Renders docs/RELIABILITY.md from the figures of a chaos run (bench/chaos.py)."""

from __future__ import annotations

import json

DESCRIPTIONS = {
    "baseline": (
        "Steady load, nothing broken: the reference row.",
        "Every accepted review processed exactly once.",
    ),
    "relay": (
        "`kill -9` of the relay's process group at random moments during the load, restarted "
        "after 0.3–1.5 s (as a supervisor would).",
        "A claim, its enqueue and the mark are one transaction: a killed relay hands off an event "
        "completely or not at all. Nothing lost, no task enqueued twice.",
    ),
    "q_worker": (
        "`kill -9` of one django-q2 worker process (pids from the cluster's Stat) at random "
        "moments; the cluster's guard starts a new one.",
        "The task the worker held is delivered again once its lock expires (`Q_RETRY_S`); the "
        "attempt was committed before the call, the lease and the ledger make the redelivery a "
        "no-op or a single retry. Calls per review stay within the attempts. Known hazard (seen "
        "in runs): an idle django-q2 worker waits in `multiprocessing.Queue.get()` holding the "
        "queue's read lock; killed there, it never releases it, every other worker blocks, and "
        "the cluster looks alive (Stat, `/readyz`) while it finishes nothing. The suite "
        "detects that (no task finished for 30 s with reviews in flight), reports it as a "
        "problem and restarts the cluster like a watchdog would, then checks the ledger again.",
    ),
    "qcluster": (
        "`kill -9` of the whole qcluster process group (sentinel, pusher, monitor, workers), "
        "restarted after 0.5–2 s.",
        "Same as a worker kill, for every task in flight and every prefetched task.",
    ),
    "gunicorn": (
        "`kill -9` of one gunicorn worker at random moments; the master starts another.",
        "Requests on that worker lose their answer (connection reset). A review is committed with "
        "its event or not at all; whatever was committed ends well.",
    ),
    "pg_restart": (
        "The private PostgreSQL is restarted with `pg_ctl restart -m immediate` (a crash and "
        "recovery), then stopped with `-m immediate` for a few seconds and started again.",
        "During the outage the web answers 503 with a clear JSON body and `Retry-After` (never a "
        "2xx for an uncommitted review, never a stack trace); relay, workers and web reconnect by "
        "themselves.",
    ),
    "pg_terminate": (
        "`pg_terminate_backend` of every client backend of the app's database (web, relay, LISTEN "
        "connection, workers, pusher) at random moments.",
        "Everyone reconnects by themselves; nothing lost. A task whose connection is killed "
        "mid-way fails in django-q2 (acknowledged, `ack_failures`), so its event waits for the "
        "sweeper (`DELIVERY_DEADLINE_S`): the *events handed off again by sweeper* figure.",
    ),
    "llm_500": (
        "The fake LLM answers 500 to half of the calls.",
        "Retries with exponential backoff; a review dead-letters only after `LLM_MAX_ATTEMPTS` "
        "failures in a row (a few at most); calls per review within the attempts.",
    ),
    "llm_503": (
        "The fake LLM answers 503 to every call for the whole outage; then it heals and the dead "
        "letters of the scenario (if any) are replayed.",
        "The breaker opens after consecutive failures and parks the events (nothing dead-lettered "
        "while it is open); without a breaker, reviews dead-letter after their attempts and the "
        "replay brings them back. Nothing lost either way.",
    ),
    "llm_429": (
        "The fake LLM answers 429 with `Retry-After: 2` to every call during the load.",
        "Events are rescheduled after at least the Retry-After; no attempt spent, no dead letter; "
        "the 429 calls are in the ledger as `rate_limited` and do not count against the attempts.",
    ),
    "llm_hang": (
        "Calls hang 7 s, past the 4 s client timeout.",
        "Timeouts are transient failures: retried with backoff, never two analyses for a review.",
    ),
    "llm_truncate": (
        "The fake LLM cuts its JSON answers in half.",
        "Permanent failure: a batch is split into solo retries, each dead-lettered at once after "
        "one repair request, with the raw answer kept.",
    ),
    "runaway": (
        "A producer at 10× the steady rate while the request budget (run-time `Budget` override) "
        "allows only a few more provider calls; then the budget is raised.",
        "At most the budgeted number of provider calls; the rest parked (visible, not failed); "
        "everything resumes when the budget is raised.",
    ),
    "idle_tx": (
        "An app session (settings.prod) opens a transaction and sleeps for minutes while the load "
        "goes on. Dead tuples and size of the outbox and queue tables are sampled every 2 s.",
        "`idle_in_transaction_session_timeout` ends the session; the outbox backlog and the queue "
        "stay small; vacuum can reclaim their dead rows once the session is gone.",
    ),
    "fuzz": (
        "schemathesis (every check but `positive_data_acceptance`: an unknown restaurant id is "
        "schema-valid but a 400 by design) against `/api/schema/`, once with each of two "
        "restaurant owners' tokens (tenants) and once with the platform client's token (the "
        "submitter, so PATCH is exercised too). Fixed seed, so runs are comparable.",
        "0 server errors; every response conforms to the schema; the reviews it created are "
        "checked by the ledger like any other.",
    ),
    "all": (
        "The ledger over every review of the run, after a last settle; plus the fake LLM's own "
        "per-review request count against the ledger's calls.",
        "lost = duplicated = 0; no provider request outside a counted call.",
    ),
}

LEDGER = """\
## How a run is judged: the ledger

`aiworker/audit.py` (`ledger_check`, also `manage.py check_ledger [--since ISO|15m] [--json]`)
puts every review of a scenario in exactly one outcome, and lists findings that must all be 0:

| outcome | meaning |
|---|---|
| processed | analysis done for the review's current revision |
| dead-lettered | `failed`, with an open (or discarded) dead letter for that revision |
| parked | pending, its event unpublished and parked with a reason (budget, breaker) or scheduled for a later retry: the outbox owns it and resumes it by itself |
| in flight | pending, its event ready for the relay or handed off (a finding unless allowed) |

| finding | what counts |
|---|---|
| **lost** | a 2xx (or a lost answer, found by the marker in its text) for a review that is not in the database; a review without its `reviews.created` event; a review pending while no unfinished event for its current revision exists; a CRITICAL review without an alert, or an alert never sent whose event is gone |
| **duplicated** | a task enqueued twice for one hand-off (below); a review whose stored result was paid for again (a provider call that started after its result was in the ledger); more paid provider calls than its attempts allow (below); analysed and dead-lettered at once; two open letters; two alert events, alerts or webhook POSTs for one review |
| **unexpected** | failed without a letter; analysed without an event; an event finished or published with `handoffs = 0`; a review committed although its request was answered with an error; in flight after the settle time |

**"Published twice", precisely.** A hand-off is the relay's claim of an event (`published_at`
set, `handoffs + 1`), which enqueues one django-q2 task per route in the same transaction.
Retries, rate limits, parking and the sweeper first hand the event back (unpublish it), so
`handoffs` grows with retries and a large value is not a duplicate. A duplicate hand-off is
visible in the queue: two tasks for the same event and route that were never dequeued (their
lock still equals their enqueue time) and were enqueued less than `DELIVERY_DEADLINE_S` apart.
A task whose lock moved forward was dequeued by a worker that then died: that is django-q2
redelivering after `Q_RETRY_S`, not a second hand-off. It is reported apart
(`redeliveries_pending`), and whatever it does must be absorbed by the consumer, which the
effect checks (paid twice, two letters, two alerts) prove.

**Provider calls per review.** Every ledger row (`LlmCall.review_ids`) that includes the review
counts. Each attempt is committed before its call and allows one call; 429s and "provider
unavailable" answers give their attempt back. So a review may be in at most
`LLM_MAX_ATTEMPTS × (1 + replays of its dead letters)` paid calls per revision, plus the calls
given back. At the end of a run the fake LLM's own count of requests per review (`/_stats`
`reviews_seen`) is compared with the ledger: at most 2 requests per counted call (one repair
request for schema-invalid output), so no request was made outside the ledger.
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=str) + "`"
    return str(value)


def render(data: dict, table_md: str) -> str:
    meta = data["meta"]
    rows = data["rows"]
    ok = meta["ok"]
    out = [
        "# Reliability: faults injected, and what the ledger says afterwards",
        "",
        "<!-- Written by `make chaos` (bench/chaos.py); do not edit by hand: run it again. -->",
        "",
        "`make chaos` (`python bench/chaos.py`, `--quick` for a short run) builds a private world "
        "on 127.0.0.1: its own PostgreSQL cluster (initdb in a temp dir, a free port, "
        "`pg_ctl` from Debian's binaries), gunicorn serving `settings.prod` with `DEBUG=False`, "
        "`relay_outbox`, `qcluster`, the fake OpenAI-compatible LLM (`ANALYZER=openai`) and a "
        "webhook receiver. A separate process POSTs reviews over HTTP at a steady rate while "
        "each scenario injects its fault; the system then settles (bounded wait) and the ledger "
        "checker judges every review of the scenario. Logs of every process are kept under "
        "`test-artifacts/chaos/<run>/`.",
        "",
        f"## Last run: {meta.get('mode')} mode, {meta.get('finished_at')}, "
        f"{meta.get('seconds')} s — {'lost = duplicated = 0 in every row' if ok else 'FAILED'}",
        "",
        f"Load {meta.get('rate_per_s')} reviews/s over 5 restaurants (3% food-safety texts), "
        f"{meta.get('gunicorn_workers')} gunicorn workers, {meta.get('q_workers')} django-q2 "
        f"workers, fake LLM {meta.get('fake_latency_ms')} ms ± 100 ms per call, client timeout "
        f"{meta.get('llm_timeout_s')} s, {meta.get('llm_max_attempts')} attempts, backoff base "
        f"{meta.get('llm_backoff_base_s')} s, Q_TIMEOUT {meta.get('q_timeout_s')} s, Q_RETRY "
        f"{meta.get('q_retry_s')} s, PostgreSQL {meta.get('postgres')}.",
        "",
        "*Accepted*: reviews that got a 2xx, plus those committed although their answer was lost. "
        "*Provider calls*: ledger rows that include a review of the scenario; *HTTP to fake*: "
        "requests the fake LLM received from the scenario's start to the end of its settle time "
        "(retries of earlier scenarios included, repair requests too).",
        "",
        table_md,
        "",
        "## The faults, what is expected, and what the last run measured",
        "",
    ]
    for row in rows:
        what, expected = DESCRIPTIONS.get(row["name"], (row["fault"], row["expected"]))
        out += [f"### {row['fault']}", "", f"- **Fault**: {what}", f"- **Expected**: {expected}"]
        figures = [
            f"accepted {row['accepted']}, processed {row['processed']}, dead-lettered "
            f"{row['dead_lettered']}, parked {row['parked']}, lost {row['lost']}, duplicated "
            f"{row['duplicated']}, unexpected {row['unexpected']}, provider calls "
            f"{row['provider_calls']} ({row['provider_http_requests']} HTTP requests)"
        ]
        if row.get("answers"):
            figures.append(
                "answers " + ", ".join(f"{k}: {v}" for k, v in sorted(row["answers"].items()))
            )
        out.append("- **Measured**: " + "; ".join(figures) + ".")
        notes = {k: v for k, v in row.get("notes", {}).items() if k != "schemathesis"}
        if notes:
            out.append(
                "- **Details**: "
                + "; ".join(f"{k.replace('_', ' ')}: {_fmt(v)}" for k, v in notes.items())
                + "."
            )
        if row.get("findings"):
            out.append(
                "- **Ledger findings**: "
                + ", ".join(f"{k} × {v}" for k, v in row["findings"].items())
                + "."
            )
        if row.get("problems"):
            out.append("- **Problems**: " + "; ".join(row["problems"]) + ".")
        out.append(f"- **Result**: {'ok' if row['ok'] else 'FAILED'} ({row['seconds']} s).")
        out.append("")
    fuzz = next((r for r in rows if r["name"] == "fuzz"), None)
    if fuzz and fuzz.get("notes", {}).get("schemathesis"):
        out += ["## API fuzzing (schemathesis)", ""]
        out += [
            "| tenant | operations | test cases | server errors | schema violations | failures by check | exit |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        for tenant, r in fuzz["notes"]["schemathesis"].items():
            checks = ", ".join(f"{k}: {v}" for k, v in r["failures_by_check"].items()) or "none"
            out.append(
                f"| {tenant} | {r['operations']} | {r['cases']} | {r['server_errors']} | "
                f"{r['schema_violations']} | {checks} | {r['exit_code']} |"
            )
        out += ["", "Full output: the `schemathesis-<tenant>.log` files of the run.", ""]
    out += [LEDGER, SECURITY]
    return "\n".join(out) + "\n"


SECURITY = """\
## Security checks in `make test` (`reviews/tests/test_security.py`)

- Mass assignment: `PATCH /api/reviews/{id}/` and the public form ignore `sentiment`,
  `analysis_status`, `reply_draft`, `reply_text`, `reply_approved_at`, `tags`, `revision`,
  `submitted_by`, `restaurant`; a PATCH with only such fields is a 400 that changes nothing; a
  nested restaurant with an `owner` is rejected (POST mass assignment: `reviews/tests/test_api.py`).
- `manage.py check --deploy --fail-level WARNING` is clean under `settings.prod`; prod refuses a
  short or default `SECRET_KEY`.
- `bandit -r reviews outbox aiworker settings -x '*/tests/*'`: every finding is on the accepted
  list, with its reason in `docs/security-exceptions.md`.
- `pip-audit -r requirements.txt --no-deps --disable-pip`: no known vulnerability (skipped with
  the exact reason when it cannot reach or audit against PyPI).
- With `DEBUG=False`, an exception in a view and a database outage show neither the API key
  nor the database password, in the response or in the logs; `/metrics`, `/readyz` and the
  schema neither.
- Dead-letter replay/discard in the admin needs a staff login with the change permission on
  dead letters: an owner is sent to the login page, staff without the permission get a 403, and
  nothing changes.
- Rate limiting and the owner-isolation matrix are tested in `reviews/tests/test_api.py` and the
  views' tests.
"""
