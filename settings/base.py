"""Every setting of the project, read from the environment with loud failures.

dev.py, test.py and prod.py change only a few values.
"""

import math
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from settings.env import env_bool, env_choice, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_htmx",
    "django_q",
    "reviews",
    "outbox",
    "aiworker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/reviews"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "inbox"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("pt-br", "Português (Brasil)")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / ".staticfiles"

# Only our own scripts and styles: htmx is served from /static/, never a CDN.
from django.utils.csp import CSP  # noqa: E402

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.SELF],
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
# Per-token limit on review submissions, counted in the shared cache ("off" disables it).
API_REVIEW_RATE = env_str("API_REVIEW_RATE", "3000/min")
SPECTACULAR_SETTINGS = {
    "TITLE": "Restaurant reviews API",
    "DESCRIPTION": "Reviews are accepted at once and analysed by AI in the background.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- The write path -------------------------------------------------------------------------
REVIEW_TEXT_MAX_CHARS = 5000
# "sync" calls the analyzer inside the request: the anti-pattern, kept only for benchmarks.
REVIEWS_ANALYSIS_MODE = env_choice("REVIEWS_ANALYSIS_MODE", "async", ("async", "sync"))

# --- Outbox and relay -----------------------------------------------------------------------
OUTBOX_ROUTES = {
    "reviews.created": ["aiworker.tasks.analyze_event"],
    "reviews.updated": ["aiworker.tasks.analyze_event"],
    "reviews.reply_requested": ["aiworker.tasks.analyze_event"],
    "reviews.critical_alert": ["aiworker.tasks.notify_event"],
}
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 500)
# Events of one key in a claimed batch share a task, up to this many (one LLM batch's worth):
# a task costs the queue several ms of CPU however little it does (docs/BENCHMARKS.md).
RELAY_TASK_EVENTS = env_int("RELAY_TASK_EVENTS", 10)
RELAY_POLL_INTERVAL_S = env_float("RELAY_POLL_INTERVAL_S", 1.0)
OUTBOX_RETENTION_HOURS = env_int("OUTBOX_RETENTION_HOURS", 72)
OUTBOX_PRUNE_BATCH = env_int("OUTBOX_PRUNE_BATCH", 1000)
# /readyz wants a relay heartbeat younger than this; relays beat three times as often.
READY_HEARTBEAT_MAX_AGE_S = env_float("READY_HEARTBEAT_MAX_AGE_S", 30.0)
# /readyz fails when a queued task has waited this long (stuck or too few workers).
READY_QUEUE_MAX_WAIT_S = env_float("READY_QUEUE_MAX_WAIT_S", 120.0)
# How often a relay sweeps overdue hand-offs and prunes old events.
RELAY_HOUSEKEEPING_S = env_float("RELAY_HOUSEKEEPING_S", 10.0)

# --- The analyzer -----------------------------------------------------------------------------
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
ANALYZER = env_choice("ANALYZER", "auto", ("auto", "openai", "local"))
if ANALYZER == "auto":
    ANALYZER = "openai" if (OPENAI_API_KEY or OPENAI_BASE_URL) else "local"
LLM_MODEL = env_str("LLM_MODEL", "gpt-4o-mini")
LLM_TIMEOUT_S = env_float("LLM_TIMEOUT_S", 20.0)
# The project retries itself (backoff through the outbox), so a 429 never sleeps in a worker.
LLM_SDK_MAX_RETRIES = env_int("LLM_SDK_MAX_RETRIES", 0)
LLM_BATCH_SIZE = env_int("LLM_BATCH_SIZE", 10)
LLM_BATCH_WAIT_MS = env_int("LLM_BATCH_WAIT_MS", 200)
LLM_MAX_ATTEMPTS = env_int("LLM_MAX_ATTEMPTS", 5)
LLM_BACKOFF_BASE_S = env_float("LLM_BACKOFF_BASE_S", 2.0)
LLM_BACKOFF_MAX_S = env_float("LLM_BACKOFF_MAX_S", 300.0)
# A handed-off event that neither finished nor failed after this long is handed off again.
DELIVERY_DEADLINE_S = env_int("DELIVERY_DEADLINE_S", 600)
LLM_BUDGET_REQUESTS_PER_HOUR = env_int("LLM_BUDGET_REQUESTS_PER_HOUR", None)
LLM_BUDGET_TOKENS_PER_HOUR = env_int("LLM_BUDGET_TOKENS_PER_HOUR", None)
LLM_BUDGET_TOKENS_PER_DAY = env_int("LLM_BUDGET_TOKENS_PER_DAY", None)
LLM_BUDGET_USD_PER_DAY = env_float("LLM_BUDGET_USD_PER_DAY", 0.0) or None
# Circuit breaker: open after this many consecutive failures, for this long; 401/403/quota
# open it at once for longer. While open, events wait; they are never dead-lettered for it.
LLM_BREAKER_FAILURES = env_int("LLM_BREAKER_FAILURES", 5)
LLM_BREAKER_COOLDOWN_S = env_float("LLM_BREAKER_COOLDOWN_S", 30.0)
LLM_BREAKER_AUTH_COOLDOWN_S = env_float("LLM_BREAKER_AUTH_COOLDOWN_S", 300.0)
# While the breaker is open, write a provisional analysis from the offline analyzer.
LLM_FALLBACK_LOCAL = env_bool("LLM_FALLBACK_LOCAL", False)
# USD per million tokens (input, output); used for the ledger's cost estimate.
LLM_PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "local-lexicon": (0.0, 0.0),
}
ALERT_WEBHOOK_URL = env_str("ALERT_WEBHOOK_URL")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("ALERT_WEBHOOK_URL must be an http(s) URL")
# Bearer token for GET /metrics; unset: only local scrapers and staff sessions.
METRICS_TOKEN = env_str("METRICS_TOKEN")
ALERT_WEBHOOK_TIMEOUT_S = env_float("ALERT_WEBHOOK_TIMEOUT_S", 5.0)

# --- django-q2 ----------------------------------------------------------------------------------
# Numbers follow DESIGN.md §6: client timeout × (SDK retries + 1) < timeout < retry, and
# retry > T × (1 + ceil((queue_limit + 1) / workers)) so prefetched tasks never run twice.
# A provider call waits on the network: throughput comes from concurrency (docs/OPERATIONS.md).
# The timeout's last 10 s are slack: a task holding several events starts no new one after
# 5 s (aiworker.tasks.NEXT_EVENT_WITHIN_S), so its last event also ends before the timeout.
Q_WORKERS = env_int("Q_WORKERS", 16)
# Relay backpressure: it claims nothing while the queue holds this many tasks (0: no limit),
# so a backlog waits in the outbox and is handed off a restaurant's events per task. Enough
# to keep every worker busy meanwhile; rechecked every RELAY_HOLD_RECHECK_S.
RELAY_QUEUE_MAX = env_int("RELAY_QUEUE_MAX", 4 * Q_WORKERS)
RELAY_HOLD_RECHECK_S = env_float("RELAY_HOLD_RECHECK_S", 0.05)
Q_QUEUE_LIMIT = 2
Q_TIMEOUT_S = int(LLM_TIMEOUT_S * (LLM_SDK_MAX_RETRIES + 1) + LLM_BATCH_WAIT_MS / 1000 + 10)
Q_RETRY_S = (Q_TIMEOUT_S + 3) * (1 + math.ceil((Q_QUEUE_LIMIT + 1) / Q_WORKERS)) + 10
Q_CLUSTER = {
    "name": "reviews",
    "orm": "default",
    "workers": Q_WORKERS,
    "queue_limit": Q_QUEUE_LIMIT,
    "timeout": Q_TIMEOUT_S,
    "retry": Q_RETRY_S,
    "max_attempts": 3,
    "ack_failures": True,
    "save_limit": -1,
    "bulk": 10,
    "poll": 0.05,
    "recycle": 500,
    "catch_up": False,
    "label": "Task queue",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django_q": {"level": env_str("Q_LOG_LEVEL", "WARNING"), "propagate": True},
        "httpx": {"level": "WARNING"},
    },
}

# One cache shared by every process: django-q2's cluster stats and API rate limits live here.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "django_cache",
    }
}
