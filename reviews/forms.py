"""Forms of the owners' web app and of the public review form. They validate; services write."""

from django import forms
from django.conf import settings
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from reviews.models import Restaurant, Review
from reviews.selectors import InboxFilters
from reviews.vocabulary import TAG_LABELS, TONE_LABELS

SENTIMENT_CHOICES = [
    (Review.Sentiment.POSITIVE, _("Positive")),
    (Review.Sentiment.NEUTRAL, _("Neutral")),
    (Review.Sentiment.NEGATIVE, _("Negative")),
    (Review.Sentiment.CRITICAL, _("Critical")),
]
STATUS_CHOICES = [
    ("pending", _("Analysis pending")),
    ("waiting", _("Waiting for AI")),
    ("done", _("Analysed")),
    ("failed", _("Analysis failed")),
]
TONE_CHOICES = list(TONE_LABELS.items())
RATING_CHOICES = [(n, str(n)) for n in range(1, 6)]


def tag_label(slug: str) -> str:
    return str(TAG_LABELS.get(slug, slug.replace("_", " ").capitalize()))


class InboxFilterForm(forms.Form):
    q = forms.CharField(
        label=_("Search"),
        required=False,
        max_length=200,
        widget=forms.SearchInput(attrs={"placeholder": _("Text or author")}),
    )
    restaurant = forms.ModelChoiceField(
        label=_("Restaurant"),
        queryset=Restaurant.objects.none(),
        required=False,
        empty_label=_("All restaurants"),
    )
    status = forms.ChoiceField(
        label=_("Analysis"), required=False, choices=[("", _("Any status")), *STATUS_CHOICES]
    )
    sentiment = forms.ChoiceField(
        label=_("Sentiment"), required=False, choices=[("", _("Any sentiment")), *SENTIMENT_CHOICES]
    )
    tag = forms.ChoiceField(label=_("Tag"), required=False)
    rating = forms.TypedChoiceField(
        label=_("Rating"),
        required=False,
        coerce=int,
        empty_value=None,
        choices=[("", _("Any rating")), *((n, f"{n} ★") for n in range(5, 0, -1))],
    )
    replied = forms.ChoiceField(
        label=_("Reply"),
        required=False,
        choices=[("", _("Replied or not")), ("no", _("Not replied")), ("yes", _("Replied"))],
    )

    def __init__(
        self, data, *, restaurants: QuerySet[Restaurant], tags: list[str], **kwargs
    ) -> None:
        super().__init__(data, **kwargs)
        self.fields["restaurant"].queryset = restaurants
        self.fields["tag"].choices = [("", _("Any tag")), *((t, tag_label(t)) for t in tags)]

    def filters(self) -> InboxFilters:
        """The valid filters; an invalid value is dropped (and shown as an error)."""
        self.is_valid()
        data = {name: value for name, value in self.cleaned_data.items() if value not in ("", None)}
        return InboxFilters(**data)


class ReplyDraftForm(forms.Form):
    text = forms.CharField(
        label=_("Reply"),
        required=False,
        max_length=settings.REVIEW_TEXT_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class ReplyApproveForm(ReplyDraftForm):
    text = forms.CharField(
        label=_("Reply"),
        max_length=settings.REVIEW_TEXT_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 4}),
        error_messages={"required": _("Write a reply before approving it.")},
    )


class ReplyRequestForm(forms.Form):
    tone = forms.ChoiceField(label=_("Tone"), choices=TONE_CHOICES)


class PublicReviewForm(forms.Form):
    rating = forms.TypedChoiceField(
        label=_("Your rating"),
        coerce=int,
        choices=RATING_CHOICES,
        widget=forms.RadioSelect,
        error_messages={"required": _("Choose a rating from 1 to 5 stars.")},
    )
    text = forms.CharField(
        label=_("Your review"),
        max_length=settings.REVIEW_TEXT_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 6}),
        error_messages={"required": _("Tell us about your order.")},
    )
    author_name = forms.CharField(label=_("Your name (optional)"), required=False, max_length=100)
