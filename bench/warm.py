"""A benchmark-only django-q2 task that warms one cluster worker (never used by the app).

A fresh qcluster worker pays for importing the OpenAI SDK and opening its connections on
its first analysis (about 0.4 s of CPU per process, 16 processes on 2 cores); bench/run.py
enqueues this task a few times before the clock starts so figures are for a warm cluster.
"""

import os
import time

from django.db import connection


def worker_warm(seconds: float = 0.3) -> int:
    from aiworker.providers import get_provider

    get_provider()
    connection.ensure_connection()
    time.sleep(seconds)  # hold this worker a moment so the other workers take the rest
    return os.getpid()
