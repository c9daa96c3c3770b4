"""The worker's own bookkeeping: analysis jobs and their attempts, dead letters, the LLM ledger."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class AnalysisJob(models.Model):
    """One review revision to analyse. Attempts are counted here, committed before each call,
    because django-q2 does not count a worker that was killed mid-task."""

    class State(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        DEAD = "dead", "Dead-lettered"

    review = models.ForeignKey("reviews.Review", on_delete=models.CASCADE, related_name="+")
    revision = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # After a batch answer left this review out or invalid, it is retried alone.
    solo = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)
    first_failure_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["review", "revision"], name="job_review_revision_uniq")
        ]

    def __str__(self) -> str:
        return f"job review {self.review_id} r{self.revision} ({self.state})"


class DeadLetter(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        REPLAYED = "replayed"
        DISCARDED = "discarded"

    job = models.ForeignKey(AnalysisJob, on_delete=models.CASCADE, related_name="dead_letters")
    review = models.ForeignKey("reviews.Review", on_delete=models.CASCADE, related_name="+")
    revision = models.PositiveIntegerField()
    event_id = models.UUIDField(null=True, blank=True)
    topic = models.CharField(max_length=100)
    error_class = models.CharField(max_length=100)
    error_message = models.TextField()
    # Groups letters that failed the same way (error class + message without ids and numbers).
    failure_fingerprint = models.CharField(max_length=16, db_index=True)
    attempts = models.PositiveIntegerField()
    first_failure_at = models.DateTimeField()
    last_failure_at = models.DateTimeField()
    raw_response = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A job has at most one open letter: failing twice never files two.
            models.UniqueConstraint(
                fields=["job"], condition=Q(status="open"), name="deadletter_one_open_per_job"
            )
        ]

    def __str__(self) -> str:
        return f"dead letter {self.pk}: review {self.review_id} {self.error_class}"


class LlmCall(models.Model):
    """The LLM call ledger: one row per provider call, inserted before the call (so budgets
    count calls in flight) and completed right after it returns."""

    class Status(models.TextChoices):
        STARTED = "started", "In flight (or its worker died)"
        OK = "ok"
        ERROR = "error"
        RATE_LIMITED = "rate_limited"
        REJECTED = "rejected", "Output rejected"

    model = models.CharField(max_length=100)
    prompt_version = models.CharField(max_length=20)
    fingerprint = models.CharField(max_length=64, db_index=True)
    batch_size = models.PositiveIntegerField()
    review_ids = models.JSONField(default=list)
    status = models.CharField(max_length=20, choices=Status.choices)
    error_class = models.CharField(max_length=100, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    request_id = models.CharField(max_length=200, blank=True)
    raw_response = models.TextField(blank=True)
    # When the event that led to this call was handed to the queue: start − this = queue wait.
    handed_off_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model} ×{self.batch_size} {self.status}"


class LlmResult(models.Model):
    """A validated per-review result, keyed by content fingerprint, reused instead of paying again."""

    fingerprint = models.CharField(max_length=64, unique=True)
    call = models.ForeignKey(LlmCall, on_delete=models.PROTECT, related_name="results")
    review_id = models.BigIntegerField(db_index=True)
    result = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"result for review {self.review_id}"


class Alert(models.Model):
    """A critical-review alert; one per review, however often its events are delivered."""

    review = models.OneToOneField("reviews.Review", on_delete=models.CASCADE, related_name="+")
    event_id = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    channel = models.CharField(max_length=20, blank=True)

    def __str__(self) -> str:
        return f"alert for review {self.review_id}"


class Breaker(models.Model):
    """Circuit breaker state shared by every worker process (one row per provider)."""

    class State(models.TextChoices):
        CLOSED = "closed"
        OPEN = "open"
        HALF_OPEN = "half_open", "Half-open (probing)"

    name = models.CharField(max_length=50, primary_key=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLOSED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    open_until = models.DateTimeField(null=True, blank=True)
    probe_started_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.state}"


class Budget(models.Model):
    """Run-time overrides of the LLM budgets; blank means the setting's value (None = unlimited)."""

    name = models.CharField(max_length=50, primary_key=True, default="llm")
    requests_per_hour = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_hour = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    usd_per_day = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"budget {self.name}"


class PipelineSample(models.Model):
    """A periodic snapshot of backlog and lag, for the operators' chart of the last hour."""

    at = models.DateTimeField(db_index=True)
    queue_depth = models.PositiveIntegerField()
    outbox_unpublished = models.PositiveIntegerField()
    parked = models.PositiveIntegerField()
    pending_reviews = models.PositiveIntegerField()
    lag_p50_s = models.FloatField(null=True)
    lag_p99_s = models.FloatField(null=True)

    def __str__(self) -> str:
        return f"sample at {self.at:%H:%M:%S}"
