from django.urls import path

from reviews import api

urlpatterns = [
    path("reviews/", api.ReviewListCreateApi.as_view(), name="api-reviews"),
    path("reviews/<int:review_id>/", api.ReviewDetailApi.as_view(), name="api-review"),
]
