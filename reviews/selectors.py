"""Reads scoped to what a user may see: owners their own restaurants, staff everything.

Every view, HTMX partial and API view starts from `restaurants_visible` or `reviews_visible`,
so another owner's objects are simply not found (404), and no count includes them.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Func, Q, QuerySet, TextField

from reviews.models import Restaurant, Review


def restaurants_visible(*, user: AbstractBaseUser) -> QuerySet[Restaurant]:
    if not user.is_authenticated:
        return Restaurant.objects.none()
    if user.is_staff:
        return Restaurant.objects.all()
    return Restaurant.objects.filter(owner=user)


def reviews_visible(*, user: AbstractBaseUser) -> QuerySet[Review]:
    return Review.objects.filter(restaurant__in=restaurants_visible(user=user)).select_related(
        "restaurant"
    )


class JsonbArrayElementsText(Func):
    """PostgreSQL's jsonb_array_elements_text: one row per element of a JSON list."""

    function = "jsonb_array_elements_text"
    output_field = TextField()


def review_tags_used(*, reviews: QuerySet[Review]) -> list[str]:
    """The tags that occur in these reviews, alphabetically: the inbox's tag filter."""
    return list(
        reviews.order_by()
        .annotate(tag=JsonbArrayElementsText(F("tags")))
        .values_list("tag", flat=True)
        .distinct()
        .order_by("tag")
    )


@dataclass(frozen=True)
class InboxFilters:
    restaurant: Restaurant | None = None
    # "pending" (queued), "waiting" (parked, e.g. budget), "done", "failed"
    status: str = ""
    sentiment: str = ""
    tag: str = ""
    rating: int | None = None
    # "yes" / "no"
    replied: str = ""
    q: str = ""


def reviews_inbox(*, user: AbstractBaseUser, filters: InboxFilters) -> QuerySet[Review]:
    """The inbox: the user's reviews narrowed by the filters, newest first."""
    reviews = reviews_visible(user=user).select_related("reply_approved_by")
    if filters.restaurant is not None:
        reviews = reviews.filter(restaurant=filters.restaurant)
    if filters.status == "waiting":
        reviews = reviews.filter(analysis_status=Review.Status.PENDING).exclude(analysis_waiting="")
    elif filters.status:
        reviews = reviews.filter(analysis_status=filters.status)
    if filters.sentiment:
        reviews = reviews.filter(sentiment=filters.sentiment)
    if filters.tag:
        reviews = reviews.filter(tags__contains=[filters.tag])
    if filters.rating is not None:
        reviews = reviews.filter(rating=filters.rating)
    if filters.replied == "yes":
        reviews = reviews.filter(reply_approved_at__isnull=False)
    elif filters.replied == "no":
        reviews = reviews.filter(reply_approved_at__isnull=True)
    if filters.q:
        reviews = reviews.filter(Q(text__icontains=filters.q) | Q(author_name__icontains=filters.q))
    return reviews.order_by("-created_at", "-id")


@dataclass(frozen=True)
class InboxCounts:
    pending: int
    failed: int
    critical_unreplied: int


def inbox_counts(*, user: AbstractBaseUser) -> InboxCounts:
    """The numbers in the inbox header, over everything the user may see."""
    counts = reviews_visible(user=user).aggregate(
        pending=Count("pk", filter=Q(analysis_status=Review.Status.PENDING)),
        failed=Count("pk", filter=Q(analysis_status=Review.Status.FAILED)),
        critical_unreplied=Count(
            "pk",
            filter=Q(sentiment=Review.Sentiment.CRITICAL, reply_approved_at__isnull=True),
        ),
    )
    return InboxCounts(**counts)
