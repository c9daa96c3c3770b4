"""Reads scoped to what a user may see: owners their own restaurants, staff everything."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

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
