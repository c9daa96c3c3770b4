"""The WSGI entry point that gunicorn loads."""

import subprocess
import sys

from reviews.tests.test_security import ROOT, prod_env


def test_wsgi_imports_every_view_and_freezes_what_start_up_allocated():
    code = (
        "import gc, sys, settings.wsgi; print(gc.get_freeze_count(), 'reviews.api' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=prod_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frozen, views_loaded = result.stdout.split()
    # Django, DRF and the app make tens of thousands of long-lived objects at start-up.
    assert int(frozen) > 20_000 and views_loaded == "True", result.stdout
