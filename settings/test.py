"""Tests: fast hashing, a per-run test database name so parallel runs never collide."""

import os

from settings.base import *  # noqa: F403
from settings.base import DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["TEST"] = {
    "NAME": "test_reviews"
    + (f"_{os.environ['TEST_DB_SUFFIX']}" if os.environ.get("TEST_DB_SUFFIX") else "")
}
LLM_BACKOFF_BASE_S = 0.2
