"""Topic → task routing. Tasks are dotted paths so the outbox imports no consumer."""

from django.conf import settings


def routes_for(topic: str) -> list[str]:
    return list(settings.OUTBOX_ROUTES.get(topic, []))
