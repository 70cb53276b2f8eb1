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


register_converter(JobIdConverter, "jobid")

urlpatterns = [
    path("jobs", views.JobListView.as_view(), name="jobs"),
    path("jobs/<jobid:job_id>", views.JobDetailView.as_view(), name="job"),
    path("jobs/<jobid:job_id>/events", views.JobEventsView.as_view(), name="job-events"),
    path("jobs/<jobid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<jobid:job_id>/claim", views.JobClaimView.as_view(), name="job-claim"),
    path("jobs/<jobid:job_id>/heartbeat", views.JobHeartbeatView.as_view(), name="job-heartbeat"),
    path("jobs/<jobid:job_id>/complete", views.JobCompleteView.as_view(), name="job-complete"),
    path("jobs/<jobid:job_id>/fail", views.JobFailView.as_view(), name="job-fail"),
]
