from __future__ import annotations

import uuid

from django.urls import path, register_converter

from pefthub_server.jobs.api import views


class JobIdConverter:
    """Job ids are written as 32 hex digits (dashed UUIDs are accepted too)."""

    # One group: the OpenAPI schema writes this as `^<regex>$`, and `^a|b$` lets `<32 hex>junk` through.
    regex = r"(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"

    def to_python(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_url(self, value) -> str:
        return value.hex if isinstance(value, uuid.UUID) else str(value)


class JobRefConverter(JobIdConverter):
    """What a user may write for a job: its full id, or a prefix of it (resolved by ``selectors.job_get``).

    Any run of 1 to 31 hex digits is routed so that a short one gets a 400 saying so, not a bare 404.
    """

    regex = r"(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{1,32})"

    def to_python(self, value: str) -> uuid.UUID | str:
        return uuid.UUID(value) if len(value) >= 32 else value.lower()


register_converter(JobIdConverter, "jobid")
register_converter(JobRefConverter, "jobref")

urlpatterns = [
    path("jobs", views.JobListView.as_view(), name="jobs"),
    # a user's routes take an id prefix too (`pefthub jobs show ed9ec9282619`); a worker's take the full id
    path("jobs/<jobref:job_id>", views.JobDetailView.as_view(), name="job"),
    path("jobs/<jobref:job_id>/events", views.JobEventsView.as_view(), name="job-events"),
    path("jobs/<jobref:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<jobref:job_id>/checkpoints", views.JobCheckpointListView.as_view(), name="job-checkpoints"),
    path("jobs/<jobid:job_id>/checkpoints/uploads", views.JobCheckpointUploadView.as_view(), name="job-checkpoint-uploads"),
    path("jobs/<jobref:job_id>/checkpoints/<int:step>", views.JobCheckpointDetailView.as_view(), name="job-checkpoint"),
    path("jobs/<jobref:job_id>/checkpoints/<int:step>/promote", views.JobCheckpointPromoteView.as_view(),
         name="job-checkpoint-promote"),
    path("jobs/<jobid:job_id>/claim", views.JobClaimView.as_view(), name="job-claim"),
    path("jobs/<jobid:job_id>/heartbeat", views.JobHeartbeatView.as_view(), name="job-heartbeat"),
    path("jobs/<jobid:job_id>/complete", views.JobCompleteView.as_view(), name="job-complete"),
    path("jobs/<jobid:job_id>/fail", views.JobFailView.as_view(), name="job-fail"),
    path("workers/hello", views.WorkerHelloView.as_view(), name="worker-hello"),
]
