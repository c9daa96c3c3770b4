from django.contrib import admin

from reviews.models import Restaurant, Review


@admin.register(Restaurant)
class RestaurantAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "owner__username"]
    list_select_related = ["owner"]


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "restaurant",
        "rating",
        "analysis_status",
        "sentiment",
        "revision",
        "created_at",
    ]
    list_filter = ["analysis_status", "sentiment", "rating", "analysis_provisional", "restaurant"]
    search_fields = ["text", "author_name", "restaurant__name"]
    list_select_related = ["restaurant"]
    date_hierarchy = "created_at"
    # Analysis fields are written by the workers through the outbox; editing them here would
    # bypass revision checks, so they are read-only.
    readonly_fields = [
        "revision",
        "analysis_status",
        "analysis_waiting",
        "analysis_revision",
        "analysis_provisional",
        "sentiment",
        "tags",
        "language",
        "analyzed_at",
        "analysis_model",
        "analysis_claimed_until",
        "reply_approved_at",
        "reply_approved_by",
        "submitted_by",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request):
        return False  # reviews enter through the API or the form, which also write the outbox event
