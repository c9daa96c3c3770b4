"""The owners' web app and the public review form (the API lives in api_urls.py)."""

from django.urls import path

from reviews import views

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("reviews/<int:review_id>/", views.review_detail, name="review-detail"),
    path("reviews/<int:review_id>/reply/draft/", views.reply_save, name="reply-save"),
    path("reviews/<int:review_id>/reply/approve/", views.reply_approve, name="reply-approve"),
    path("reviews/<int:review_id>/reply/request/", views.reply_request, name="reply-request"),
    path("trends/", views.trends_index, name="trends-index"),
    path("restaurants/<int:restaurant_id>/trends/", views.trends, name="trends"),
    path("r/<int:restaurant_id>/", views.review_form, name="review-form"),
    path("r/<int:restaurant_id>/thanks/", views.review_thanks, name="review-thanks"),
]
