"""In-process POSTs through Django's request handler, for probes that measure the web code
without HTTP (bench/gc_probe.py, bench/post_cpu.py). Call after Django is set up."""

from collections.abc import Callable


def review_poster(username: str) -> Callable[[int], None]:
    """A user, token and ten restaurants (made once), and a function that POSTs review i."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from reviews.models import Restaurant

    user, _ = get_user_model().objects.get_or_create(username=username)
    token, _ = Token.objects.get_or_create(user=user)
    restaurants = [
        Restaurant.objects.get_or_create(name=f"{username} {i}", defaults={"owner": user})[0].pk
        for i in range(10)
    ]
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}", HTTP_HOST="localhost")

    def post(i: int) -> None:
        body = {"restaurant": restaurants[i % 10], "rating": 4, "text": f"{username} #{i}"}
        response = client.post("/api/reviews/", body, content_type="application/json")
        assert response.status_code == 202, response.content[:200]

    return post
