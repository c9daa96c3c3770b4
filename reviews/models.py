"""Restaurants and their reviews, with the analysis written back by the AI workers."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q

REPLY_DEADLINE = timedelta(days=7)


class Restaurant(models.Model):
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="restaurants"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Review(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Analysis pending"
        DONE = "done", "Analysed"
        FAILED = "failed", "Analysis failed"

    class Sentiment(models.TextChoices):
        POSITIVE = "POSITIVE"
        NEUTRAL = "NEUTRAL"
        NEGATIVE = "NEGATIVE"
        CRITICAL = "CRITICAL"

    restaurant = models.ForeignKey(Restaurant, on_delete=models.CASCADE, related_name="reviews")
    rating = models.PositiveSmallIntegerField()
    text = models.TextField()
    author_name = models.CharField(max_length=100, blank=True)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Bumped by every edit; an analysis carries the revision it was computed for.
    revision = models.PositiveIntegerField(default=1)

    analysis_status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    # Why a pending analysis waits (e.g. the AI budget is spent); empty when it is simply queued.
    analysis_waiting = models.CharField(max_length=200, blank=True)
    analysis_revision = models.PositiveIntegerField(null=True, blank=True)
    analysis_provisional = models.BooleanField(default=False)
    # NULL, not "", until analysed: the API promises `sentiment: null` for a pending review.
    sentiment = models.CharField(max_length=10, choices=Sentiment.choices, null=True, blank=True)  # noqa: DJ001
    tags = models.JSONField(default=list, blank=True)
    language = models.CharField(max_length=5, blank=True)
    reply_draft = models.TextField(blank=True)
    reply_tone = models.CharField(max_length=20, default="default")
    analyzed_at = models.DateTimeField(null=True, blank=True)
    analysis_model = models.CharField(max_length=100, blank=True)
    analysis_claimed_until = models.DateTimeField(null=True, blank=True)

    reply_text = models.TextField(blank=True)
    reply_approved_at = models.DateTimeField(null=True, blank=True)
    reply_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rating__gte=1, rating__lte=5), name="review_rating_1_5"
            ),
        ]
        indexes = [
            models.Index(fields=["restaurant", "-created_at"], name="review_restaurant_idx"),
            # Reviews still needing an analysis: pending, or only provisionally analysed.
            models.Index(
                fields=["restaurant", "created_at"],
                name="review_needs_analysis_idx",
                condition=Q(analysis_status="pending") | Q(analysis_provisional=True),
            ),
        ]

    def __str__(self) -> str:
        return f"Review {self.pk} of {self.restaurant_id} ({self.rating}★)"

    @property
    def reply_deadline(self):
        return self.created_at + REPLY_DEADLINE
