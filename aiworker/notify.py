"""Critical-review alerts: raised through the outbox, sent once to a Slack-compatible webhook."""

import json
import logging
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from aiworker.models import Alert
from outbox.services import event_finish, event_lock, event_publish, event_retry_at
from reviews.models import Review
from reviews.services import review_event_key

logger = logging.getLogger("aiworker.notify")
TASK = "aiworker.tasks.notify_event"


def alert_raise(*, review: Review) -> Alert | None:
    """In the caller's transaction, with the review row locked: one alert per review,
    announced by an outbox event."""
    if Alert.objects.filter(review=review).exists():
        return None
    event = event_publish(
        topic="reviews.critical_alert",
        key=review_event_key(review),
        payload={"review_id": review.pk},
    )
    return Alert.objects.create(review=review, event_id=event.pk)


def alert_message(review: Review) -> dict:
    # Slack escapes &, < and > in text; review text is data and must not become markup.
    text = review.text[:500].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return {
        "text": f":rotating_light: Critical review for {review.restaurant.name} ({review.rating}★)",
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Critical review* #{review.pk} for *{review.restaurant.name}* "
                    f"({review.rating}★, tags: {', '.join(review.tags) or '-'})\n>{text}",
                },
            }
        ],
        "review_id": review.pk,
        "idempotency_key": f"critical-alert-review-{review.pk}",
    }


def _post(url: str, message: dict) -> None:
    request = urllib.request.Request(  # noqa: S310 - the URL comes from settings, not from users
        url,
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT_S) as response:  # noqa: S310 - URL from settings
        response.read()


def alert_send(*, event_id: str) -> str:
    """Send the alert of one event; a second delivery sends nothing."""
    with transaction.atomic():
        event = event_lock(event_id=event_id)
        if event is None or TASK in event.finished_tasks:
            return "duplicate"
        alert = (
            Alert.objects.select_for_update().filter(review_id=event.payload["review_id"]).first()
        )
        if alert is None or alert.sent_at is not None:
            event_finish(event=event, task=TASK)
            return "duplicate"
        review = Review.objects.select_related("restaurant").get(pk=alert.review_id)
        url = settings.ALERT_WEBHOOK_URL
        try:
            if url:
                _post(url, alert_message(review))
            else:
                logger.warning(
                    "CRITICAL review %s for %s (ALERT_WEBHOOK_URL unset)",
                    review.pk,
                    review.restaurant.name,
                )
        except OSError as exc:
            delay = timedelta(seconds=min(5 * 2 ** min(event.handoffs, 8), 900))
            logger.warning(
                "alert webhook failed (%s); retrying in %s", exc.__class__.__name__, delay
            )
            event_retry_at(event=event, when=timezone.now() + delay)
            return "retry"
        alert.sent_at = timezone.now()
        alert.channel = "webhook" if url else "log"
        alert.save(update_fields=["sent_at", "channel"])
        event_finish(event=event, task=TASK)
    return "sent"
