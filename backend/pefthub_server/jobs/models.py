"""Jobs (train, merge, eval) run by workers, and their ordered event log."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from pefthub.protocol import jobs as contract
from pefthub.protocol.repos import ADAPTER, MODEL
from pefthub_server.core.models import choices


class Job(models.Model):
    Type = choices("Type", contract.JOB_TYPES)
    Status = choices("Status", contract.STATUSES)
    ACTIVE = tuple(contract.ACTIVE)
    FINISHED = tuple(contract.FINISHED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=8, choices=Type.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    queue = models.CharField(max_length=16, default="gpu")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    namespace = models.ForeignKey("registry.Namespace", on_delete=models.CASCADE, related_name="jobs",
                                  help_text="Namespace of the output repository")
    output_name = models.CharField(max_length=96)
    spec = models.JSONField()
    inputs = models.JSONField(default=dict, help_text="Input references pinned to versions at submit time")
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)
    request_digest = models.CharField(max_length=64, blank=True, default="")
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    worker = models.CharField(max_length=200, blank=True, default="")
    token = models.OneToOneField("core.ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="job")
    progress = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.JSONField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True,
                                         help_text="When the job's id was last sent to its queue")
    dispatches = models.PositiveIntegerField(default=0, help_text="Sends since the job last entered the queue")
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When the job last entered its queue (its place in it)")
    needs = models.JSONField(default=dict, blank=True,
                             help_text="What its worker must have (pefthub.protocol.capabilities): cuda, bitsandbytes, ram_bytes")
    waiting_for = models.CharField(max_length=200, blank=True, default="",
                                   help_text="While queued: the worker it waits for, when no connected worker can run it")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "idempotency_key"], name="uniq_job_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id.hex[:12]} → {self.output} ({self.status})"

    @property
    def output(self) -> str:
        return f"{self.namespace.name}/{self.output_name}"

    @property
    def output_kind(self) -> str:
        return MODEL if self.type == contract.MERGE else ADAPTER

    @property
    def makes_version(self) -> bool:
        """Whether the job pushes a result version to ``output``: an eval job only attaches metrics to its adapter."""
        return self.type != contract.EVAL

    def pinned_inputs(self) -> list[dict]:
        """Every input as pinned at submit (``{"repo", "number", "digest"}``): what its token may read."""
        pins = [self.inputs[key] for key in ("base_model", "adapter", "dataset", "continue_from") if key in self.inputs]
        return pins + list(self.inputs.get("adapters", []))


class Worker(models.Model):
    """A worker that said hello (at start, then every third of PEFTHUB_WORKER_PRESENCE_SECONDS, and at each claim).

    ``capabilities`` is what it reported (pefthub.protocol.capabilities), its queues included.
    """

    name = models.CharField(max_length=200, unique=True)
    capabilities = models.JSONField(default=dict)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(self.queues)})"

    @property
    def queues(self) -> list[str]:
        return list(self.capabilities.get("queues") or [])


class JobEvent(models.Model):
    Type = choices("Type", contract.EVENT_TYPES)

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=12, choices=Type.choices)
    attempt = models.PositiveIntegerField(default=0)
    time = models.DateTimeField()
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="uniq_job_event_seq")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.seq} {self.type}"


class JobCheckpoint(models.Model):
    """A resumable training state of a job at an optimizer step: blobs tied to the job, not a version.

    Its files (adapter, optimizer, scheduler, RNG and loop state) are read only by the job's
    owner and the job's own token (a later attempt resumes from the newest one), and a job
    keeps its newest ``PEFTHUB_CHECKPOINTS_KEPT``; ``promote`` turns one into a version.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    attempt = models.PositiveIntegerField()
    step = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    size = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "-step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="uniq_job_checkpoint_step")]

    def __str__(self) -> str:
        return f"{self.job_id} step {self.step}"


class CheckpointFile(models.Model):
    checkpoint = models.ForeignKey(JobCheckpoint, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=512)
    # registry.blobs.blobs_collect keeps the blobs a checkpoint holds (this related name)
    blob = models.ForeignKey("registry.Blob", on_delete=models.PROTECT, related_name="checkpoint_files")
    size = models.BigIntegerField()

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["checkpoint", "path"], name="uniq_checkpoint_path")]

    def __str__(self) -> str:
        return self.path
