"""Which jobs a caller may see: its own, and those writing into a namespace it belongs to."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from pefthub_server.core.errors import NotFound
from pefthub_server.jobs.models import Job
from pefthub_server.registry.selectors import member_namespaces


def visible_jobs(user) -> QuerySet[Job]:
    if not user.is_authenticated:
        return Job.objects.none()
    return Job.objects.filter(Q(owner=user) | Q(namespace__in=member_namespaces(user))).select_related(
        "namespace", "owner", "result_version__repository__namespace"
    )


def job_get(*, user, job_id) -> Job:
    job = visible_jobs(user).filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"Job {job_id} not found (or you have no access to it).")
    return job
