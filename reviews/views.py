"""The owners' web app (inbox, reply workflow, trends) and the public review form.

Thin function views: selectors read, services write, templates render. An HTMX request gets a
partial of the same template (`template#partial`) instead of a view of its own. Every object
is looked up through `restaurants_visible`/`reviews_visible`, so another owner's is a 404.
"""

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from reviews import services
from reviews.forms import (
    InboxFilterForm,
    PublicReviewForm,
    ReplyApproveForm,
    ReplyDraftForm,
    ReplyRequestForm,
)
from reviews.models import Restaurant, Review
from reviews.selectors import (
    inbox_counts,
    restaurants_visible,
    review_tags_used,
    reviews_inbox,
    reviews_visible,
)
from reviews.trends import SENTIMENTS, restaurant_trends

PAGE_SIZE = 20
ROW = "reviews/inbox.html#review-row"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def owner_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """login_required that also suits HTMX: a polling row whose session expired must send the
    whole page to the login form, not swap the login form into the row."""

    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args, **kwargs) -> HttpResponse:
        if request.user.is_authenticated:
            return view(request, *args, **kwargs)
        if request.htmx:
            here = request.htmx.current_url_abs_path or request.get_full_path()
            return HttpResponseClientRedirect(redirect_to_login(here).url)
        return redirect_to_login(request.get_full_path())

    return wrapper


def _partial_wanted(request: HtmxHttpRequest) -> bool:
    # A boosted link or a history restore wants the whole page, as does a plain request.
    return (
        bool(request.htmx) and not request.htmx.boosted and not request.htmx.history_restore_request
    )


def _visible_review(request: HtmxHttpRequest, review_id: int) -> Review:
    return get_object_or_404(
        reviews_visible(user=request.user).select_related("reply_approved_by"), pk=review_id
    )


@require_GET
@owner_required
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    visible = reviews_visible(user=request.user)
    form = InboxFilterForm(
        request.GET,
        restaurants=restaurants_visible(user=request.user),
        tags=review_tags_used(reviews=visible),
    )
    filters = form.filters()
    if "restaurant" in form.errors:
        raise Http404  # not theirs (or gone): the same answer as any other owner's object
    page = Paginator(reviews_inbox(user=request.user, filters=filters), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    context = {
        "nav": "inbox",
        "filter_form": form,
        "filtering": any(form.cleaned_data.get(name) for name in form.fields),
        "page_obj": page,
        "counts": inbox_counts(user=request.user),
    }
    template = "reviews/inbox.html#results" if _partial_wanted(request) else "reviews/inbox.html"
    response = render(request, template, context)
    # The same URL answers a page or a fragment: caches must tell them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


@require_GET
@owner_required
def review_detail(request: HtmxHttpRequest, review_id: int) -> HttpResponse:
    """One review: the whole page, or for HTMX (polling, actions) only its row."""
    review = _visible_review(request, review_id)
    template = ROW if _partial_wanted(request) else "reviews/review_detail.html"
    response = render(request, template, {"review": review, "nav": "inbox"})
    patch_vary_headers(response, ("HX-Request",))
    return response


def _row_answer(
    request: HtmxHttpRequest,
    review: Review,
    *,
    notice: str = "",
    errors: list[str] | None = None,
    submitted_text: str | None = None,
) -> HttpResponse:
    """After an action: the updated row for HTMX; without JS, the review page."""
    context = {
        "review": review,
        "nav": "inbox",
        "notice": notice,
        "errors": errors or [],
        "submitted_text": submitted_text,
    }
    if request.htmx:
        return render(request, ROW, context)
    if errors:
        return render(request, "reviews/review_detail.html", context)
    messages.success(request, notice)
    return redirect("review-detail", review.pk)


def _errors(form) -> list[str]:
    return [str(error) for errors in form.errors.values() for error in errors]


@require_POST
@owner_required
def reply_save(request: HtmxHttpRequest, review_id: int) -> HttpResponse:
    review = _visible_review(request, review_id)
    form = ReplyDraftForm(request.POST)
    if not form.is_valid():
        return _row_answer(
            request, review, errors=_errors(form), submitted_text=request.POST.get("text", "")
        )
    review = services.reply_draft_save(review=review, text=form.cleaned_data["text"])
    return _row_answer(request, review, notice=_("Draft saved. It is not published."))


@require_POST
@owner_required
def reply_approve(request: HtmxHttpRequest, review_id: int) -> HttpResponse:
    review = _visible_review(request, review_id)
    form = ReplyApproveForm(request.POST)
    if not form.is_valid():
        return _row_answer(
            request, review, errors=_errors(form), submitted_text=request.POST.get("text", "")
        )
    review = services.reply_approve(
        review=review, text=form.cleaned_data["text"], user=request.user
    )
    return _row_answer(request, review, notice=_("Reply approved."))


@require_POST
@owner_required
def reply_request(request: HtmxHttpRequest, review_id: int) -> HttpResponse:
    """Ask the AI for a new draft in a tone: through the outbox, never in this request."""
    review = _visible_review(request, review_id)
    if review.reply_approved_at:
        # A new analysis would not replace an approved reply, so asking would only confuse.
        return _row_answer(
            request, review, errors=[_("This review already has an approved reply.")]
        )
    form = ReplyRequestForm(request.POST)
    if not form.is_valid():
        return _row_answer(request, review, errors=_errors(form))
    review = services.reply_request(review=review, tone=form.cleaned_data["tone"])
    return _row_answer(request, review, notice=_("A new draft was requested."))


@require_GET
@owner_required
def trends_index(request: HtmxHttpRequest) -> HttpResponse:
    """The restaurant picker of the trends page: goes to the chosen (or first) restaurant."""
    restaurants = restaurants_visible(user=request.user)
    chosen = request.GET.get("restaurant")
    if chosen:
        if not chosen.isdigit():
            raise Http404
        return redirect("trends", get_object_or_404(restaurants, pk=chosen).pk)
    first = restaurants.first()
    if first is not None:
        return redirect("trends", first.pk)
    return render(request, "reviews/trends.html", {"nav": "trends", "restaurants": restaurants})


@require_GET
@owner_required
def trends(request: HtmxHttpRequest, restaurant_id: int) -> HttpResponse:
    restaurants = restaurants_visible(user=request.user)
    restaurant = get_object_or_404(restaurants, pk=restaurant_id)
    context = {
        "nav": "trends",
        "restaurants": restaurants,
        "restaurant": restaurant,
        "trends": restaurant_trends(restaurant=restaurant),
        "sentiments": SENTIMENTS,
    }
    return render(request, "reviews/trends.html", context)


@require_http_methods(["GET", "POST"])
def review_form(request: HttpRequest, restaurant_id: int) -> HttpResponse:
    """The public review form: no login, shows no reviews, uses the API's write path."""
    restaurant = get_object_or_404(Restaurant, pk=restaurant_id)
    form = PublicReviewForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        services.review_create(restaurant_id=restaurant.pk, **form.cleaned_data)
        # Redirect after POST: a reload of the thank-you page cannot submit twice.
        return redirect("review-thanks", restaurant.pk)
    return render(request, "reviews/public_form.html", {"restaurant": restaurant, "form": form})


@require_GET
def review_thanks(request: HttpRequest, restaurant_id: int) -> HttpResponse:
    restaurant = get_object_or_404(Restaurant, pk=restaurant_id)
    return render(request, "reviews/public_thanks.html", {"restaurant": restaurant})
