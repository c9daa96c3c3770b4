"""Development: DEBUG on by default, everything else as in base."""

from settings.base import *  # noqa: F403
from settings.env import env_bool

DEBUG = env_bool("DEBUG", True)
# Password-reset mails are printed, not sent, in development.
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
