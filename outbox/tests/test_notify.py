"""New events wake relays through the table's INSERT trigger, at commit and only then."""

import psycopg
import pytest
from django.db import connection, transaction

from outbox.models import NOTIFY_CHANNEL, OutboxEvent
from outbox.services import event_publish


@pytest.fixture
def listener(transactional_db):
    conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    yield conn
    conn.close()


def received(conn: psycopg.Connection) -> list[str]:
    return [n.channel for n in conn.notifies(timeout=0.5, stop_after=5)]


def test_a_published_event_notifies_at_commit(listener):
    with transaction.atomic():
        event_publish(topic="reviews.created", key="restaurant:1", payload={"review_id": 1})
        assert received(listener) == []  # not before the commit
    assert received(listener) == [NOTIFY_CHANNEL]


def test_a_rolled_back_event_never_notifies(listener):
    with pytest.raises(RuntimeError), transaction.atomic():
        event_publish(topic="reviews.created", key="restaurant:1", payload={"review_id": 1})
        raise RuntimeError("the request failed after writing its event")
    assert received(listener) == []
    assert not OutboxEvent.objects.exists()


def test_a_bulk_insert_notifies_once(listener):
    OutboxEvent.objects.bulk_create(
        OutboxEvent(topic="reviews.created", key=f"restaurant:{i}", payload={}) for i in range(50)
    )
    assert received(listener) == [NOTIFY_CHANNEL]
