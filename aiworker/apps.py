import sys

from django.apps import AppConfig


class AiworkerConfig(AppConfig):
    name = "aiworker"
    verbose_name = "AI worker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # django-q2 forks its workers from the qcluster process. Importing the task code and
        # the provider's SDK there once (about 1 s of CPU, measured in docs/BENCHMARKS.md)
        # spares every worker, and every recycled one, from doing it again.
        if sys.argv[1:2] == ["qcluster"]:
            from aiworker import tasks  # noqa: F401
            from aiworker.providers import get_provider

            get_provider()
