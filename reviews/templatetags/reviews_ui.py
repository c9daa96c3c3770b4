"""Template helpers of the owners' web app: labels, short ages, stars and the trend chart.

Everything returned here is plain data or built with format_html, so review and model text
stays autoescaped.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django import template
from django.conf import settings
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from reviews import forms
from reviews.models import Review
from reviews.trends import SENTIMENTS, Week

register = template.Library()

SENTIMENT_LABELS = dict(forms.SENTIMENT_CHOICES)
TONE_LABELS = dict(forms.TONE_CHOICES)


@register.filter
def sentiment_label(sentiment: str | None) -> str:
    return str(SENTIMENT_LABELS.get(sentiment, sentiment or ""))


@register.filter
def tag_label(slug: str) -> str:
    return forms.tag_label(slug)


@register.filter
def tone_label(tone: str) -> str:
    return str(TONE_LABELS.get(tone, tone))


@register.simple_tag
def tone_choices():
    return forms.TONE_CHOICES


@register.simple_tag
def reply_max_chars() -> int:
    return settings.REVIEW_TEXT_MAX_CHARS


@register.simple_tag
def stars(rating: int):
    label = ngettext("%(n)d of 5 stars", "%(n)d of 5 stars", rating) % {"n": rating}
    return format_html(
        '<span class="stars" role="img" aria-label="{}">{}'
        '<span class="stars__off">{}</span></span>',
        label,
        "★" * rating,
        "★" * (5 - rating),
    )


@register.filter
def age(moment: datetime | None) -> str:
    """A short age ("12 s", "5 min", "3 h", "2 days") that changes on every poll."""
    if moment is None:
        return ""
    seconds = max(int((timezone.now() - moment).total_seconds()), 0)
    if seconds < 60:
        return _("%(n)d s") % {"n": seconds}
    if seconds < 3600:
        return _("%(n)d min") % {"n": seconds // 60}
    if seconds < 86400:
        return _("%(n)d h") % {"n": seconds // 3600}
    days = seconds // 86400
    return ngettext("%(n)d day", "%(n)d days", days) % {"n": days}


@register.filter
def duration(value: timedelta | None) -> str:
    if value is None:
        return "—"
    minutes = int(value.total_seconds() // 60)
    if minutes < 60:
        return _("%(n)d min") % {"n": minutes}
    if minutes < 48 * 60:
        return _("%(h)d h %(m)02d min") % {"h": minutes // 60, "m": minutes % 60}
    days = minutes // (24 * 60)
    return ngettext("%(n)d day", "%(n)d days", days) % {"n": days}


@register.filter
def percent(value: float | None) -> str:
    return "—" if value is None else f"{round(value * 100)} %"


@register.filter
def get_count(counts: dict, key) -> int:
    return counts.get(key, 0)


@register.filter
def reply_overdue(review: Review) -> bool:
    return not review.reply_approved_at and review.reply_deadline < timezone.now()


# --- The weekly sentiment chart: geometry here, SVG markup in the template. -------------------
WIDTH, HEIGHT = 800, 260
LEFT, RIGHT, TOP, BOTTOM = 36, 8, 12, 28


@dataclass(frozen=True)
class Segment:
    sentiment: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    center: float
    label: str
    show_label: bool
    total: int
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    right: float
    bottom: float
    bars: list[Bar]
    ticks: list[tuple[int, float]]  # (value, y)
    empty: bool


def _nice_max(value: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if value <= step * 4:
            return step * 4
    return value


@register.simple_tag
def sentiment_chart(weeks: list[Week]) -> Chart:
    """Stacked bars, one per week, sentiments bottom to top from positive to critical."""
    top = _nice_max(max((w.total for w in weeks), default=0) or 1)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(len(weeks), 1)
    bars = []
    for i, week in enumerate(weeks):
        y = HEIGHT - BOTTOM
        segments = []
        for sentiment in SENTIMENTS:
            count = week.by_sentiment[sentiment]
            if count:
                h = plot_h * count / top
                y -= h
                segments.append(Segment(sentiment, count, round(y, 1), round(h, 1)))
        bars.append(
            Bar(
                x=round(LEFT + i * slot + slot * 0.2, 1),
                width=round(slot * 0.6, 1),
                center=round(LEFT + i * slot + slot / 2, 1),
                label=formats.date_format(week.start, "j M"),
                # Every other week keeps the labels readable at phone width.
                show_label=(len(weeks) - 1 - i) % 2 == 0,
                total=week.total,
                segments=segments,
            )
        )
    ticks = [(top * k // 4, round(HEIGHT - BOTTOM - plot_h * k / 4, 1)) for k in range(5)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        bottom=HEIGHT - BOTTOM,
        bars=bars,
        ticks=ticks,
        empty=not any(w.total for w in weeks),
    )
