"""Fast security checks: mass assignment, deploy checks, static analysis, dependency audit,
no secrets in error pages or logs, staff-only dead-letter triage.

Findings of bandit and pip-audit that are accepted are listed, with reasons, in
docs/security-exceptions.md and in the allow-lists below; anything else fails.
"""

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.urls import include, path
from django.utils import timezone

from aiworker.models import AnalysisJob, DeadLetter
from outbox.models import OutboxEvent
from reviews.models import Restaurant, Review
from reviews.services import review_create

ROOT = Path(__file__).resolve().parents[2]
URL = "/api/reviews/"
BIN = Path(sys.executable).parent
FORBIDDEN = {
    "sentiment": "POSITIVE",
    "analysis_status": "done",
    "analysis_revision": 7,
    "analysis_model": "evil",
    "reply_draft": "spam",
    "reply_text": "published without approval",
    "reply_approved_at": "2020-01-01T00:00:00Z",
    "tags": ["price"],
    "revision": 9,
    "submitted_by": 1,
    "analyzed_at": "2020-01-01T00:00:00Z",
}


# --------------------------------------------------------------------------- mass assignment


def fields_of(review: Review) -> tuple:
    review.refresh_from_db()
    return (
        review.sentiment,
        review.analysis_status,
        review.analysis_model,
        review.reply_draft,
        review.reply_text,
        review.reply_approved_at,
        review.tags,
        review.analyzed_at,
    )


CLEAN = (None, "pending", "", "", "", None, [], None)


@pytest.mark.django_db
def test_patch_ignores_analysis_reply_and_ownership_fields(api, restaurant, other_restaurant):
    rid = api.post(
        URL, {"restaurant": restaurant.pk, "rating": 5, "text": "Ótimo"}, format="json"
    ).json()["id"]
    response = api.patch(
        f"{URL}{rid}/",
        {"text": "Ótimo, corrigido", **FORBIDDEN, "restaurant": other_restaurant.pk},
        format="json",
    )
    assert response.status_code == 202
    review = Review.objects.get(pk=rid)
    assert fields_of(review) == CLEAN
    assert (review.text, review.revision, review.restaurant_id) == (
        "Ótimo, corrigido",
        2,
        restaurant.pk,
    )
    assert review.submitted_by.username == "platform"


@pytest.mark.django_db
def test_patch_with_only_forbidden_fields_is_rejected_and_changes_nothing(api, restaurant):
    rid = api.post(
        URL, {"restaurant": restaurant.pk, "rating": 5, "text": "Ótimo"}, format="json"
    ).json()["id"]
    response = api.patch(f"{URL}{rid}/", FORBIDDEN, format="json")
    assert response.status_code == 400
    review = Review.objects.get(pk=rid)
    assert fields_of(review) == CLEAN and review.revision == 1
    assert OutboxEvent.objects.filter(topic="reviews.updated").count() == 0


@pytest.mark.django_db
def test_post_cannot_set_submitter_or_nest_restaurant_owner(api, restaurant, other_owner):
    # `submitted_by` is whoever holds the token, never a field of the body.
    response = api.post(
        URL,
        {"restaurant": restaurant.pk, "rating": 4, "text": "Bom", "submitted_by": other_owner.pk},
        format="json",
    )
    assert response.status_code == 202
    assert Review.objects.get().submitted_by.username == "platform"
    # A nested restaurant (to create or re-own one) is not accepted: it is a primary key.
    nested = {"id": restaurant.pk, "name": "Mine now", "owner": other_owner.pk}
    response = api.post(URL, {"restaurant": nested, "rating": 4, "text": "Bom"}, format="json")
    assert response.status_code == 400 and "restaurant" in response.json()
    restaurant.refresh_from_db()
    assert (restaurant.owner_id, restaurant.name) == (restaurant.owner_id, "Cantina da Alice")
    assert Restaurant.objects.count() == 1 and Review.objects.count() == 1


@pytest.mark.django_db
def test_public_form_ignores_analysis_and_restaurant_fields(client, restaurant, other_restaurant):
    response = client.post(
        f"/r/{restaurant.pk}/",
        {
            "rating": 2,
            "text": "Demorou muito",
            "author_name": "Ana",
            **FORBIDDEN,
            "restaurant": other_restaurant.pk,
        },
    )
    assert response.status_code == 302
    review = Review.objects.get()
    assert review.restaurant_id == restaurant.pk and review.submitted_by is None
    assert fields_of(review) == CLEAN and review.revision == 1


# --------------------------------------------------------------------------- deploy checks


def prod_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECURE_SSL_REDIRECT")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "settings.prod",
            "SECRET_KEY": secrets.token_urlsafe(64),
            **extra,
        }
    )
    return env


def test_check_deploy_is_clean_under_prod_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=prod_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr
    assert "WARNING" not in result.stderr and "?:" not in result.stdout + result.stderr


def test_prod_refuses_a_short_or_default_secret_key():
    env = prod_env(SECRET_KEY="too-short")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


# --------------------------------------------------------------------------- static analysis

# (bandit test id, file) -> findings accepted there; reasons in docs/security-exceptions.md.
BANDIT_ACCEPTED = Counter(
    {
        ("B101", "aiworker/fake_llm.py"): 1,  # assert narrows a type; not a security check
        ("B101", "aiworker/jobs.py"): 1,
        ("B101", "outbox/relay.py"): 1,
        ("B403", "outbox/relay.py"): 1,  # writes django-q2's pickled packages, never loads any
        ("B311", "aiworker/fake_llm.py"): 1,  # random for fault injection, not crypto
        ("B311", "aiworker/jobs.py"): 3,  # random for backoff/429/parking jitter, not crypto
        ("B404", "aiworker/supervisor.py"): 1,  # runs our own manage.py qcluster
        ("B603", "aiworker/supervisor.py"): 1,  # fixed argv: sys.executable, manage.py, "qcluster"
        ("B104", "aiworker/fake_llm.py"): 1,  # compares a host string; binds only what it is told
        ("B310", "aiworker/fake_llm.py"): 1,  # scheme checked to be http(s) just before
        ("B310", "aiworker/notify.py"): 1,  # ALERT_WEBHOOK_URL, set by the operator
        ("B608", "aiworker/pipeline.py"): 1,  # SQL from module constants (STAGES, BUCKETS) only
        ("B608", "reviews/services.py"): 1,  # APPLY_SQL's RETURNING: Review's own column names
    }
)


def test_bandit_has_no_unexplained_findings():
    bandit = shutil.which("bandit", path=str(BIN)) or shutil.which("bandit")
    if bandit is None:
        pytest.skip("bandit is not installed (it belongs in requirements-dev.txt)")
    result = subprocess.run(
        [
            bandit,
            "-r",
            "reviews",
            "outbox",
            "aiworker",
            "settings",
            "-x",
            "*/tests/*",
            "-f",
            "json",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    assert not report["errors"], report["errors"]
    found = Counter((r["test_id"], r["filename"].removeprefix("./")) for r in report["results"])
    unexplained = {
        key: n - BANDIT_ACCEPTED[key] for key, n in found.items() if n > BANDIT_ACCEPTED[key]
    }
    details = [
        f"{r['test_id']} {r['filename']}:{r['line_number']} {r['issue_text']}"
        for r in report["results"]
        if (r["test_id"], r["filename"].removeprefix("./")) in unexplained
    ]
    assert not unexplained, "unexplained bandit findings:\n" + "\n".join(details)


# Vulnerability ids accepted for now, with reasons in docs/security-exceptions.md (none today).
PIP_AUDIT_IGNORED: list[str] = []


def test_pinned_requirements_have_no_known_vulnerabilities():
    pip_audit = shutil.which("pip-audit", path=str(BIN)) or shutil.which("pip-audit")
    if pip_audit is None:
        pytest.skip("pip-audit is not installed (it belongs in requirements-dev.txt)")
    ignore = [a for vuln in PIP_AUDIT_IGNORED for a in ("--ignore-vuln", vuln)]
    result = subprocess.run(
        [
            pip_audit,
            "-r",
            "requirements.txt",
            "--no-deps",
            "--disable-pip",
            "-f",
            "json",
            "--progress-spinner",
            "off",
            *ignore,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if (
            "ConnectionError" in result.stderr
            or "NameResolution" in result.stderr
            or "timed out" in result.stderr
        ):
            pytest.skip(f"pip-audit cannot reach its vulnerability service (PyPI): {last}")
        raise AssertionError(f"pip-audit failed (exit {result.returncode}): {last}") from None
    deps = report["dependencies"]
    vulnerable = {d["name"]: [v["id"] for v in d["vulns"]] for d in deps if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities: {vulnerable}"
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        reasons = sorted({d["skip_reason"] for d in deps})
        pytest.skip(
            f"pip-audit could audit none of the {len(deps)} pins: {reasons[0]} "
            f"(and {len(deps) - 1} more like it)"
        )


# --------------------------------------------------------------------------- secrets in errors


API_KEY = "sk-test-" + "k3y" * 12
DB_PASSWORD = "pw-" + "s3cr3t" * 6


def crashing_view(request):
    # Real code keeps secrets in locals and settings; an error page must show neither.
    api_key = settings.OPENAI_API_KEY
    password = connection.settings_dict["PASSWORD"]
    raise RuntimeError(f"provider failed after {len(api_key) + len(password)} bytes of config")


urlpatterns = [path("boom/", crashing_view), path("", include("settings.urls"))]
handler500 = "aiworker.health.server_error"


@pytest.fixture
def secret_settings(settings):
    settings.DEBUG = False
    settings.OPENAI_API_KEY = API_KEY
    old = connection.settings_dict.get("PASSWORD")
    connection.settings_dict["PASSWORD"] = DB_PASSWORD  # trust auth: ignored by the server
    yield settings
    connection.settings_dict["PASSWORD"] = old


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text and DB_PASSWORD not in text


@pytest.mark.urls(__name__)
@pytest.mark.django_db
def test_an_error_in_a_view_shows_no_secret(client, secret_settings, caplog, capfd):
    client.raise_request_exception = False
    with caplog.at_level(logging.DEBUG):
        response = client.get("/boom/")
    assert response.status_code == 500
    body = response.content.decode()
    assert "Internal server error." in body, body
    assert "Traceback" not in body and "RuntimeError" not in body
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "RuntimeError" in logged or "RuntimeError" in err  # the error is logged…
    assert_no_secret(body, logged, out, err)  # …without the secrets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_database_outage_is_a_503_without_secret_or_trace(
    api, restaurant, secret_settings, caplog, capfd
):
    api.raise_request_exception = False
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(PORT=str(free_port()), HOST="127.0.0.1")
    try:
        with caplog.at_level(logging.DEBUG):
            response = api.post(
                URL, {"restaurant": restaurant.pk, "rating": 5, "text": "Ótimo"}, format="json"
            )
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert response.status_code == 503 and response["Retry-After"]
    body = response.content.decode()
    assert "nothing was saved" in json.loads(body)["detail"].lower()
    assert "Traceback" not in body and "psycopg" not in body
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert_no_secret(body, logged, out, err)
    assert Review.objects.count() == 0


@pytest.mark.django_db
def test_metrics_and_readiness_show_no_secret(client, secret_settings):
    for url in ("/metrics", "/readyz", "/healthz", "/api/schema/"):
        response = client.get(url)
        assert_no_secret(response.content.decode())


# --------------------------------------------------------------------------- admin triage


@pytest.fixture
def letter(restaurant):
    review = review_create(restaurant_id=restaurant.pk, rating=1, text="Falhou")
    job = AnalysisJob.objects.create(review=review, revision=1, state="dead", attempts=5)
    now = timezone.now()
    return DeadLetter.objects.create(
        job=job,
        review=review,
        revision=1,
        topic="reviews.created",
        error_class="TransientError",
        error_message="provider error 500",
        failure_fingerprint="f",
        attempts=5,
        first_failure_at=now,
        last_failure_at=now,
    )


CHANGELIST = "/admin/aiworker/deadletter/"


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["replay", "discard"])
def test_dead_letter_actions_need_staff(client, owner, letter, action):
    client.force_login(owner)  # a restaurant owner, not staff
    assert client.get(CHANGELIST).status_code == 302
    response = client.post(CHANGELIST, {"action": action, "_selected_action": [letter.pk]})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    letter.refresh_from_db()
    assert letter.status == "open" and letter.resolved_by is None
    assert DeadLetter.objects.filter(status="open").count() == 1


@pytest.mark.django_db
def test_dead_letter_replay_works_for_staff_and_records_who(client, staff, letter):
    client.force_login(staff)
    response = client.post(CHANGELIST, {"action": "replay", "_selected_action": [letter.pk]})
    assert response.status_code == 302
    letter.refresh_from_db()
    assert (letter.status, letter.resolved_by) == ("replayed", staff)


@pytest.mark.django_db
def test_dead_letter_actions_need_the_change_permission_not_just_staff(client, letter):
    from django.contrib.auth import get_user_model

    plain_staff = get_user_model().objects.create_user("helpdesk", password="x", is_staff=True)
    client.force_login(plain_staff)
    # Staff without the dead letters' change permission can neither list nor replay them.
    assert client.get(CHANGELIST).status_code == 403
    client.post(CHANGELIST, {"action": "replay", "_selected_action": [letter.pk]})
    letter.refresh_from_db()
    assert letter.status == "open"
