"""Private copies of outbox.relay.relay_once that try one speed-up each (benchmark only).

They keep the app's semantics exactly: the same CLAIM_SQL, routes, unrouted handling and
signed django-q2 packages, all in one transaction. bench/run.py measures them next to the
app's own function in the same run; the app code itself is not changed here.

- `signer`: build one TimestampSigner per batch instead of one per package (django-q2's
  SignedPackage.dumps constructs a signer, validating its salt and separator with regular
  expressions, for every task). The packages are byte-for-byte what SignedPackage.dumps
  makes, so `SignedPackage.loads` reads them.
- `copy`: write the queue rows with COPY instead of the ORM's bulk_create (which builds the
  INSERT and quotes 3 arrays of 500 values on the client).
- `signer_copy`: both.
"""

from __future__ import annotations

import time
import uuid

from django.core import signing
from django.db import connection, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import PickleSerializer

from outbox.relay import CLAIM_SQL, HandOff, _finish_unrouted, task_package
from outbox.routes import routes_for


def _task(func: str, event_id: uuid.UUID, topic: str) -> dict:
    return {
        "id": uuid.uuid4().hex,
        "name": f"{topic}:{event_id}",
        "func": func,
        "args": (str(event_id),),
        "kwargs": {},
        "ack_failure": True,
        "started": timezone.now(),
    }


def _relay_once(*, batch_size: int, fast_signer: bool, use_copy: bool) -> HandOff:
    started = time.perf_counter()
    queue_key = get_broker().list_key or Conf.CLUSTER_NAME
    signer = signing.TimestampSigner(key=Conf.SECRET_KEY, salt=Conf.PREFIX)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(CLAIM_SQL, [batch_size])
            claimed = cursor.fetchall()
        payloads = []
        unrouted_ids = []
        for event_id, topic, _key in claimed:
            funcs = routes_for(topic)
            if not funcs:
                unrouted_ids.append(event_id)
                continue
            for func in funcs:
                if fast_signer:
                    payloads.append(
                        signer.sign_object(
                            _task(func, event_id, topic),
                            serializer=PickleSerializer,
                            compress=Conf.COMPRESSED,
                        )
                    )
                else:
                    payloads.append(task_package(func=func, event_ids=[event_id], topic=topic))
        if unrouted_ids:
            _finish_unrouted(unrouted_ids)
        now = timezone.now()
        if use_copy:
            copy_sql = "COPY django_q_ormq (key, payload, lock) FROM STDIN"
            with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as cp:
                for payload in payloads:
                    cp.write_row((queue_key, payload, now))
        else:
            OrmQ.objects.bulk_create(OrmQ(key=queue_key, payload=p, lock=now) for p in payloads)
    return HandOff(len(claimed), len(payloads), len(unrouted_ids), time.perf_counter() - started)


def relay_once_signer(*, batch_size: int) -> HandOff:
    return _relay_once(batch_size=batch_size, fast_signer=True, use_copy=False)


def relay_once_copy(*, batch_size: int) -> HandOff:
    return _relay_once(batch_size=batch_size, fast_signer=False, use_copy=True)


def relay_once_signer_copy(*, batch_size: int) -> HandOff:
    return _relay_once(batch_size=batch_size, fast_signer=True, use_copy=True)


VARIANTS = {
    "signer": relay_once_signer,
    "copy": relay_once_copy,
    "signer_copy": relay_once_signer_copy,
}
