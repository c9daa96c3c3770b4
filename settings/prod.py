"""Production: secrets only from the environment, HTTPS everywhere."""

from django.core.exceptions import ImproperlyConfigured

from settings.base import *  # noqa: F403
from settings.base import DATABASES, SECRET_KEY
from settings.env import env_bool, env_int

DEBUG = env_bool("DEBUG", False)
if not SECRET_KEY or SECRET_KEY.startswith("dev-only") or len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be set to a long random value in production")

SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
# A session that sits in a transaction must not hold back vacuum of the outbox and queue tables.
DATABASES["default"].setdefault("OPTIONS", {})["options"] = (
    f"-c idle_in_transaction_session_timeout={env_int('DB_IDLE_IN_TX_TIMEOUT_MS', 60000)}"
)
