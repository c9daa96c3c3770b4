"""Fixtures shared by every app's tests. Real PostgreSQL, nothing of our own mocked."""

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from reviews.models import Restaurant


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("alice", password="alice-pass-123")


@pytest.fixture
def other_owner(db):
    return get_user_model().objects.create_user("bob", password="bob-pass-123")


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(
        "staff", password="staff-pass-123", is_staff=True, is_superuser=True
    )


@pytest.fixture
def restaurant(owner):
    return Restaurant.objects.create(name="Cantina da Alice", owner=owner)


@pytest.fixture
def other_restaurant(other_owner):
    return Restaurant.objects.create(name="Bob's Burgers", owner=other_owner)


@pytest.fixture
def platform_user(db):
    """The delivery platform's client that submits reviews through the API."""
    return get_user_model().objects.create_user("platform", password="platform-pass-123")


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(platform_user) -> APIClient:
    return token_client(platform_user)


@pytest.fixture
def owner_api(owner) -> APIClient:
    return token_client(owner)


@pytest.fixture
def proc_env(transactional_db):
    """Environment for real subprocesses (relay, qcluster, fake LLM) that must use the test database."""
    import os

    from django.conf import settings

    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DATABASE_URL"] = (
        f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env["DJANGO_SETTINGS_MODULE"] = "settings.test"
    env["PYTHONUNBUFFERED"] = "1"
    return env
