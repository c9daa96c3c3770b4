"""Staff triage: dead letters grouped by failure with replay/discard, and the LLM call ledger."""

from django.contrib import admin, messages
from django.contrib.admin import ShowFacets

from aiworker.models import Alert, AnalysisJob, Breaker, Budget, DeadLetter, LlmCall
from aiworker.services import (
    breaker_close,
    budget_update,
    dead_letters_discard,
    dead_letters_replay,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "review",
        "error_class",
        "short_message",
        "failure_fingerprint",
        "attempts",
        "last_failure_at",
        "status",
        "resolved_by",
    ]
    # Facet counts on the fingerprint/error filters show how letters group by failure.
    list_filter = ["status", "error_class", "failure_fingerprint", "topic"]
    show_facets = ShowFacets.ALWAYS
    search_fields = ["error_message", "review__text", "=event_id"]
    date_hierarchy = "created_at"
    actions = ["replay", "discard"]
    readonly_fields = [f.name for f in DeadLetter._meta.fields]

    def has_change_permission(self, request, obj=None):
        # Replay and discard need the change permission; the fields stay read-only.
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    @admin.display(description="message")
    def short_message(self, obj: DeadLetter) -> str:
        return obj.error_message[:80]

    @admin.action(description="Replay selected dead letters through the outbox")
    def replay(self, request, queryset):
        result = dead_letters_replay(
            ids=list(queryset.values_list("pk", flat=True)), user=request.user
        )
        self.message_user(
            request,
            f"Replayed {len(result.replayed)}; skipped {len(result.skipped)} not open.",
            messages.SUCCESS,
        )

    @admin.action(description="Discard selected dead letters")
    def discard(self, request, queryset):
        count = dead_letters_discard(
            ids=list(queryset.values_list("pk", flat=True)), user=request.user
        )
        self.message_user(request, f"Discarded {count}.", messages.SUCCESS)


@admin.register(AnalysisJob)
class AnalysisJobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "review",
        "revision",
        "state",
        "attempts",
        "solo",
        "last_failure_at",
        "finished_at",
    ]
    list_filter = ["state", "solo"]
    search_fields = ["=review__id", "last_error"]


@admin.register(LlmCall)
class LlmCallAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "created_at",
        "model",
        "status",
        "batch_size",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "error_class",
    ]
    list_filter = ["status", "model", "prompt_version", "error_class"]
    show_facets = ShowFacets.ALWAYS
    search_fields = ["=fingerprint", "=request_id"]
    date_hierarchy = "created_at"


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["review", "created_at", "sent_at", "channel"]


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "requests_per_hour",
        "tokens_per_hour",
        "tokens_per_day",
        "usd_per_day",
        "updated_by",
        "updated_at",
    ]
    fields = ["requests_per_hour", "tokens_per_hour", "tokens_per_day", "usd_per_day"]

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        # Through the service, so events parked for budget resume at once.
        budget_update(user=request.user, **{f: form.cleaned_data[f] for f in self.fields})


@admin.register(Breaker)
class BreakerAdmin(ReadOnlyAdmin):
    list_display = ["name", "state", "consecutive_failures", "open_until", "reason", "changed_at"]
    actions = ["close"]

    def has_change_permission(self, request, obj=None):
        return admin.ModelAdmin.has_change_permission(self, request, obj)

    @admin.action(description="Close the breaker now and resume parked events")
    def close(self, request, queryset):
        resumed = breaker_close(user=request.user)
        self.message_user(
            request, f"Breaker closed; {resumed} parked events resume.", messages.SUCCESS
        )
