from django.contrib import admin

from outbox.models import Heartbeat, OutboxEvent


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "topic",
        "key",
        "state",
        "created_at",
        "available_at",
        "published_at",
        "finished_at",
        "handoffs",
    ]
    list_filter = [
        "topic",
        ("published_at", admin.EmptyFieldListFilter),
        ("finished_at", admin.EmptyFieldListFilter),
    ]
    search_fields = ["key", "id"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        # The outbox is an append-only log; changing a row by hand breaks exactly-once hand-off.
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "beat_at"]
    readonly_fields = ["name", "beat_at", "detail"]
