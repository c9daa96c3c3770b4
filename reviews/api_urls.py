from django.urls import path, re_path

from reviews import api

urlpatterns = [
    path("reviews/", api.ReviewListCreateApi.as_view(), name="api-reviews"),
    path("reviews/<int:review_id>/", api.ReviewDetailApi.as_view(), name="api-review"),
    re_path(r"^.*$", api.not_found),
]
