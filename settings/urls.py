from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from aiworker import health
from aiworker import views as aiworker_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/", include("reviews.api_urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("ops/", aiworker_views.dashboard, name="ops-dashboard"),
    path("", include("reviews.urls")),
]

handler500 = "aiworker.health.server_error"
