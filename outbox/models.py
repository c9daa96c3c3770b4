"""The transactional outbox: events written in the same transaction as the change they announce."""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

# LISTEN/NOTIFY channel that wakes relays; migration 0003's INSERT trigger notifies it.
NOTIFY_CHANNEL = "outbox"


class OutboxEvent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=100)
    key = models.CharField(
        max_length=200,
        help_text="Grouping key: the relay gives events of one key one task (restaurant:42)",
    )
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    # The relay claims events whose time has come; consumers push this forward to retry or park.
    available_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    handoffs = models.PositiveIntegerField(default=0)
    # Consumers record themselves here; the event is finished when every route has.
    finished_tasks = models.JSONField(default=list, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    parked_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["available_at"],
                name="outbox_unpublished_idx",
                condition=Q(published_at__isnull=True),
            ),
            models.Index(
                fields=["published_at"],
                name="outbox_unfinished_idx",
                condition=Q(published_at__isnull=False, finished_at__isnull=True),
            ),
            models.Index(fields=["finished_at"], name="outbox_finished_idx"),
            models.Index(fields=["key"], name="outbox_key_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.key} ({self.id})"

    @property
    def state(self) -> str:
        if self.finished_at:
            return "finished"
        if self.published_at:
            return "handed off"
        if self.parked_reason:
            return "parked"
        return "waiting" if self.available_at > timezone.now() else "unpublished"


class Heartbeat(models.Model):
    """Last sign of life of a long-running process (relay, worker), for /readyz."""

    name = models.CharField(max_length=100, primary_key=True)
    beat_at = models.DateTimeField()
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.beat_at:%H:%M:%S}"
