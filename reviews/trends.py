"""Trend queries for one restaurant: sentiment and tag counts, weekly sentiment, reply speed.

The caller passes a restaurant it got from `restaurants_visible`, so nothing here can count
another owner's reviews.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Aggregate, Count, DurationField, F, Q
from django.db.models.functions import TruncWeek
from django.utils import timezone

from reviews.models import Restaurant, Review
from reviews.selectors import JsonbArrayElementsText

SENTIMENTS = [s.value for s in Review.Sentiment]
WINDOWS = (7, 30)
WEEKS = 12


class Median(Aggregate):
    """PostgreSQL's percentile_cont(0.5); it works on intervals too."""

    function = "percentile_cont"
    name = "Median"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"


@dataclass(frozen=True)
class WindowStats:
    days: int
    total: int
    by_sentiment: dict[str, int]
    pending: int
    replied: int
    median_reply: timedelta | None

    @property
    def response_rate(self) -> float | None:
        return self.replied / self.total if self.total else None


@dataclass(frozen=True)
class TagCount:
    tag: str
    counts: dict[int, int]  # window days → count


@dataclass(frozen=True)
class Week:
    start: date
    by_sentiment: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_sentiment.values())


@dataclass(frozen=True)
class Trends:
    windows: list[WindowStats]
    tags: list[TagCount]
    weeks: list[Week]


def _window(reviews, *, days: int, since: datetime) -> WindowStats:
    recent = reviews.filter(created_at__gte=since)
    sentiment_counts = {
        s: Count("pk", filter=Q(sentiment=s, analysis_status=Review.Status.DONE))
        for s in SENTIMENTS
    }
    stats = recent.aggregate(
        total=Count("pk"),
        pending=Count("pk", filter=~Q(analysis_status=Review.Status.DONE)),
        replied=Count("pk", filter=Q(reply_approved_at__isnull=False)),
        median_reply=Median(
            F("reply_approved_at") - F("created_at"),
            filter=Q(reply_approved_at__isnull=False),
            output_field=DurationField(),
        ),
        **sentiment_counts,
    )
    return WindowStats(
        days=days,
        total=stats["total"],
        by_sentiment={s: stats[s] for s in SENTIMENTS},
        pending=stats["pending"],
        replied=stats["replied"],
        median_reply=stats["median_reply"],
    )


def _tags(reviews, *, since: dict[int, datetime]) -> list[TagCount]:
    longest = max(since)
    rows = (
        reviews.filter(created_at__gte=since[longest], analysis_status=Review.Status.DONE)
        .order_by()
        .annotate(tag=JsonbArrayElementsText(F("tags")))
        .values("tag")
        .annotate(**{f"d{d}": Count("pk", filter=Q(created_at__gte=since[d])) for d in since})
    )
    tags = [TagCount(tag=r["tag"], counts={d: r[f"d{d}"] for d in since}) for r in rows]
    return sorted(tags, key=lambda t: (-t.counts[longest], t.tag))


def _weeks(reviews, *, now: datetime) -> list[Week]:
    today = timezone.localdate(now)
    this_week = today - timedelta(days=today.weekday())
    starts = [this_week - timedelta(weeks=n) for n in reversed(range(WEEKS))]
    rows = (
        reviews.filter(
            analysis_status=Review.Status.DONE,
            created_at__date__gte=starts[0],
        )
        .annotate(week=TruncWeek("created_at"))
        .values("week", "sentiment")
        .annotate(n=Count("pk"))
        .order_by()
    )
    counts: dict[date, dict[str, int]] = {start: dict.fromkeys(SENTIMENTS, 0) for start in starts}
    for row in rows:
        week = row["week"].date()
        if week in counts and row["sentiment"] in SENTIMENTS:
            counts[week][row["sentiment"]] += row["n"]
    return [Week(start=start, by_sentiment=counts[start]) for start in starts]


def restaurant_trends(*, restaurant: Restaurant, now: datetime | None = None) -> Trends:
    now = now or timezone.now()
    reviews = Review.objects.filter(restaurant=restaurant)
    since = {days: now - timedelta(days=days) for days in WINDOWS}
    return Trends(
        windows=[_window(reviews, days=d, since=since[d]) for d in WINDOWS],
        tags=_tags(reviews, since=since),
        weeks=_weeks(reviews, now=now),
    )
