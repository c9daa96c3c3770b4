"""Private copies of outbox.relay.relay_once that undo one of its speed-ups each (benchmark
only), so every run shows what each change buys, measured side by side.

They keep the app's semantics exactly: the same claim, routes, task grouping, unrouted
handling and signed django-q2 packages that `SignedPackage.loads` reads, all in one
transaction. bench/run.py measures them next to the app's own function.

- `django_signer`: each package from Django's `TimestampSigner.sign_object` with django-q2's
  PickleSerializer (one signer per batch): key derivation, timestamp, pickler per package.
- `list_copy`: build every package of the batch first, then COPY them (the server waits
  while the client packs).
- `before`: both, and event ids as UUID objects: the relay as it was before the packer.
"""

from __future__ import annotations

import time
import uuid

from django.core import signing
from django.db import connection, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import PickleSerializer

from outbox.relay import (
    CLAIM_SQL,
    HandOff,
    TaskPacker,
    _enqueue,
    _finish_unrouted,
    _packages,
    _route,
)


class _DjangoSigner:
    """Packages as `signing.TimestampSigner.sign_object` makes them, one per task."""

    def __init__(self) -> None:
        self.started = timezone.now()
        self._signer = signing.TimestampSigner(key=Conf.SECRET_KEY, salt=Conf.PREFIX)

    def pack(self, *, func: str, event_ids: list, topic: str) -> str:
        more = f"+{len(event_ids) - 1}" if len(event_ids) > 1 else ""
        task = {
            "id": uuid.uuid4().hex,
            "name": f"{topic}:{event_ids[0]}{more}",
            "func": func,
            "args": tuple(str(event_id) for event_id in event_ids),
            "kwargs": {},
            "ack_failure": True,
            "started": timezone.now(),
        }
        return self._signer.sign_object(task, serializer=PickleSerializer, compress=Conf.COMPRESSED)


def _relay_once(*, batch_size: int, django_signer=False, listed=False, uuids=False) -> HandOff:
    started = time.perf_counter()
    queue_key = get_broker().list_key or Conf.CLUSTER_NAME
    claim_sql = CLAIM_SQL.replace("SELECT id::text,", "SELECT id,") if uuids else CLAIM_SQL
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(claim_sql, [batch_size])
            claimed = cursor.fetchall()
        if not claimed:
            return HandOff(0, 0, 0, time.perf_counter() - started)
        groups, unrouted = _route(claimed)
        packer = _DjangoSigner() if django_signer else TaskPacker()
        payloads = _packages(groups, packer)
        tasks = _enqueue(queue_key, list(payloads) if listed else payloads, now=packer.started)
        if unrouted:
            _finish_unrouted(unrouted)
    return HandOff(len(claimed), tasks, len(unrouted), time.perf_counter() - started)


VARIANTS = {
    "django_signer": lambda *, batch_size: _relay_once(batch_size=batch_size, django_signer=True),
    "list_copy": lambda *, batch_size: _relay_once(batch_size=batch_size, listed=True),
    "before": lambda *, batch_size: _relay_once(
        batch_size=batch_size, django_signer=True, listed=True, uuids=True
    ),
}
