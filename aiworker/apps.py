from django.apps import AppConfig


class AiworkerConfig(AppConfig):
    name = "aiworker"
    verbose_name = "AI worker"
    default_auto_field = "django.db.models.BigAutoField"
