"""Demo data for `make run`: an owner login, two restaurants, an API token, a few reviews."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from reviews.models import Restaurant
from reviews.services import review_create

DEMO_REVIEWS = [
    ("Cantina da Ana", 5, "Comida maravilhosa e entrega rápida, chegou tudo quentinho.", "Marina"),
    ("Cantina da Ana", 2, "O pedido atrasou mais de uma hora e a batata chegou murcha.", "João"),
    ("Cantina da Ana", 1, "Encontrei um cabelo na comida e passei mal depois.", "Paula"),
    ("Burger Lab", 4, "Great burger, fries were a bit cold but the sauce is amazing.", "Sam"),
    ("Burger Lab", 3, "It was okay. Nothing special, delivery on time.", "Chris"),
]


class Command(BaseCommand):
    help = "Create a demo owner, two restaurants, an API token and a few reviews (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--password", default="demo-owner-pass", help="Password of the demo owner"
        )

    @transaction.atomic
    def handle(self, *args, password: str, **options):
        users = get_user_model()
        owner, created = users.objects.get_or_create(
            username="owner", defaults={"email": "owner@example.com"}
        )
        if created:
            owner.set_password(password)
            owner.save()
        staff, staff_created = users.objects.get_or_create(
            username="staff", defaults={"is_staff": True, "is_superuser": True}
        )
        if staff_created:
            staff.set_password(password)
            staff.save()
        platform, _ = users.objects.get_or_create(username="platform")
        token, _ = Token.objects.get_or_create(user=platform)
        restaurants = {}
        for name in ("Cantina da Ana", "Burger Lab"):
            restaurants[name], _ = Restaurant.objects.get_or_create(name=name, owner=owner)
        if not restaurants["Cantina da Ana"].reviews.exists():
            for name, rating, text, author in DEMO_REVIEWS:
                review_create(
                    restaurant_id=restaurants[name].pk, rating=rating, text=text, author_name=author
                )
        ids = ", ".join(f"{r.name}={r.pk}" for r in restaurants.values())
        self.stdout.write(
            self.style.SUCCESS("Demo data ready.")
            + f"\n  owners' page login: owner / {password}   (staff / {password} for /admin/)"
            + f"\n  restaurants: {ids}"
            + f"\n  API token (platform client): {token.key}"
            + "\n  try: curl -X POST http://127.0.0.1:8000/api/reviews/ "
            + f"-H 'Authorization: Token {token.key}' -H 'Content-Type: application/json' "
            + f'-d \'{{"restaurant": {restaurants["Burger Lab"].pk}, "rating": 5, "text": "Great fries!"}}\''
        )
