"""The fixed vocabularies of a review's analysis: tags and reply tones.

They belong to reviews (what an owner filters by and asks for); the AI worker imports them
to constrain and validate what a model may answer.
"""

from django.utils.translation import gettext_lazy as _

# Tag slug → display name. The model may only choose from these slugs.
TAG_LABELS = {
    "food_quality": _("Food quality"),
    "taste": _("Taste"),
    "portion": _("Portion"),
    "temperature": _("Temperature"),
    "delivery_time": _("Delivery time"),
    "delivery_courier": _("Courier"),
    "packaging": _("Packaging"),
    "wrong_order": _("Wrong order"),
    "missing_items": _("Missing items"),
    "price": _("Price"),
    "customer_service": _("Customer service"),
    "hygiene": _("Hygiene"),
    "food_safety": _("Food safety"),
    "app_experience": _("App experience"),
}
TAGS = tuple(TAG_LABELS)

# The tones an owner may ask for; "default" is what the first analysis uses.
TONE_LABELS = {
    "friendly": _("Friendly"),
    "formal": _("Formal"),
    "apologetic": _("Apologetic"),
}
TONES = ("default", *TONE_LABELS)
