"""The reviews API: thin DRF views with nested input/output serializers."""

from django.conf import settings
from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from reviews.models import Restaurant, Review
from reviews.selectors import reviews_visible
from reviews.services import review_create, review_update

ERROR = inline_serializer("Error", fields={"detail": serializers.CharField()})
FIELD_ERRORS = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="Field errors: {field: [message, …]}; nothing was written.",
)
# Error answers every endpoint can give; 503 means the database was unreachable, nothing saved.
COMMON_ERRORS = {401: ERROR, 503: ERROR}
WRITE_ERRORS = {**COMMON_ERRORS, 400: FIELD_ERRORS, 403: ERROR, 429: ERROR}


class ReviewOutput(serializers.ModelSerializer):
    class Meta:
        model = Review
        fields = [
            "id",
            "restaurant",
            "rating",
            "text",
            "author_name",
            "created_at",
            "revision",
            "analysis_status",
            "sentiment",
            "tags",
            "reply_draft",
            "analyzed_at",
            "analysis_model",
        ]
        read_only_fields = fields


ACCEPTED = inline_serializer(
    "ReviewAccepted",
    fields={
        "id": serializers.IntegerField(),
        "status": serializers.CharField(),
        "analysis_status": serializers.CharField(),
    },
)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only: DRF's IntegerField also takes "4", 4.0 and true."""

    def to_internal_value(self, data):
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string only: DRF's CharField also takes numbers and booleans as text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class SubmitThrottle(ScopedRateThrottle):
    """Limits review submissions per token (per IP when anonymous); reads are not throttled."""

    def allow_request(self, request, view) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)

    def get_rate(self) -> str | None:
        # Read at request time so the rate follows settings (and "off" turns it off).
        return None if settings.API_REVIEW_RATE == "off" else settings.API_REVIEW_RATE


class ReviewListCreateApi(APIView):
    throttle_classes = [SubmitThrottle]
    throttle_scope = "review_submit"

    class Input(serializers.Serializer):
        # Checked by the INSERT's foreign key, not a SELECT here (review_create).
        restaurant = StrictIntegerField(min_value=1)
        rating = StrictIntegerField(min_value=1, max_value=5)
        text = StrictCharField(max_length=settings.REVIEW_TEXT_MAX_CHARS, allow_blank=False)
        author_name = StrictCharField(max_length=100, required=False, allow_blank=True, default="")

    @extend_schema(request=Input, responses={202: ACCEPTED, **WRITE_ERRORS})
    def post(self, request):
        serializer = self.Input(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            review = review_create(
                restaurant_id=data["restaurant"],
                rating=data["rating"],
                text=data["text"],
                author_name=data["author_name"],
                submitted_by=request.user,
            )
        except Restaurant.DoesNotExist:
            raise serializers.ValidationError(
                {"restaurant": [f'Invalid pk "{data["restaurant"]}" - object does not exist.']}
            ) from None
        return Response(
            {"id": review.pk, "status": "received", "analysis_status": review.analysis_status},
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(responses={200: ReviewOutput(many=True), **COMMON_ERRORS})
    def get(self, request):
        reviews = reviews_visible(user=request.user).order_by("-created_at", "-id")[:100]
        return Response(ReviewOutput(reviews, many=True).data)


class ReviewDetailApi(APIView):
    class Input(serializers.Serializer):
        rating = StrictIntegerField(min_value=1, max_value=5, required=False)
        text = StrictCharField(max_length=settings.REVIEW_TEXT_MAX_CHARS, required=False)

        def validate(self, attrs):
            if not attrs:
                raise serializers.ValidationError("Send text and/or rating.")
            return attrs

    @extend_schema(responses={200: ReviewOutput, 404: ERROR, **COMMON_ERRORS})
    def get(self, request, review_id: int):
        review = get_object_or_404(reviews_visible(user=request.user), pk=review_id)
        return Response(ReviewOutput(review).data)

    @extend_schema(request=Input, responses={202: ACCEPTED, 404: ERROR, **WRITE_ERRORS})
    def patch(self, request, review_id: int):
        review = get_object_or_404(Review, pk=review_id)
        if review.submitted_by_id != request.user.pk:
            # Only the client that submitted a review may correct it; others learn nothing.
            if not reviews_visible(user=request.user).filter(pk=review_id).exists():
                raise Http404
            raise PermissionDenied("Only the submitter of a review may correct it.")
        serializer = self.Input(data=request.data)
        serializer.is_valid(raise_exception=True)
        review = review_update(review=review, **serializer.validated_data)
        return Response(
            {"id": review.pk, "status": "received", "analysis_status": review.analysis_status},
            status=status.HTTP_202_ACCEPTED,
        )


# DRF views are exempt too (they check CSRF only for session logins); without this,
# CsrfViewMiddleware answers writes to an unknown path with its HTML 403 page. The view
# reads and changes nothing, so there is nothing for CSRF to protect.
@csrf_exempt
def not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Unknown API paths answer JSON like the rest of the API, not Django's HTML page."""
    return JsonResponse({"detail": "Not found."}, status=404)
