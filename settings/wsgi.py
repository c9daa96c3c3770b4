"""WSGI entry point for gunicorn."""

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.prod")
application = get_wsgi_application()

# Import every view now, then move what start-up allocated (Django, DRF, the app: about 100k
# objects that live as long as the process) out of the collector's reach. A full collection
# that scanned them paused every request of the worker for about 60 ms (docs/BENCHMARKS.md).
get_resolver().url_patterns  # noqa: B018 - evaluated for its imports
gc.freeze()
