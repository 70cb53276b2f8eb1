"""Which jobs a caller may see: its own, and those writing into a namespace it belongs to (staff superusers: all)."""

from __future__ import annotations

import uuid

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery

from pefthub.protocol.jobs import JOB_ID_MIN_PREFIX
from pefthub_server.core.errors import NotFound, ValidationFailed
from pefthub_server.jobs.models import Job
from pefthub_server.registry.selectors import member_namespaces, reads_everything

#: how many of the jobs an ambiguous prefix matches its 400 lists
AMBIGUOUS_SHOWN = 5


def visible_jobs(user) -> QuerySet[Job]:
    if not user.is_authenticated:
        return Job.objects.none()
    jobs = Job.objects.all() if reads_everything(user) else Job.objects.filter(
        Q(owner=user) | Q(namespace__in=member_namespaces(user)))
    return jobs.select_related("namespace", "owner", "result_version__repository__namespace")


def queue_places(jobs) -> dict[uuid.UUID, tuple[int, int]]:
    """For each queued job of ``jobs``: (its 1-based position in its queue, the queue's depth), in one query.

    A queue's order is the order its jobs entered it (``queued_at``, then id). Every queued job
    counts, whoever owns it: the depth says how busy the queue is, never whose the jobs are.
    """
    ids = [job.pk for job in jobs if job.status == Job.Status.QUEUED]
    if not ids:
        return {}
    queued = Job.objects.filter(status=Job.Status.QUEUED, queue=OuterRef("queue")).order_by().values("queue")
    ahead = queued.filter(Q(queued_at__lt=OuterRef("queued_at")) | Q(queued_at=OuterRef("queued_at"), id__lt=OuterRef("id")))
    rows = Job.objects.filter(pk__in=ids).annotate(
        ahead=Subquery(ahead.annotate(n=Count("id")).values("n")),
        depth=Subquery(queued.annotate(n=Count("id")).values("n")),
    ).values_list("pk", "ahead", "depth")
    return {pk: ((ahead or 0) + 1, depth or 1) for pk, ahead, depth in rows}


def job_get(*, user, job_id: uuid.UUID | str) -> Job:
    """The job ``user`` may see by its id, or by a unique prefix of at least JOB_ID_MIN_PREFIX hex digits.

    A prefix is matched among the jobs ``user`` may see only (a range on the primary key), so
    it says nothing about anyone else's: a prefix that only others' jobs share is not found.
    """
    if isinstance(job_id, uuid.UUID):
        job = visible_jobs(user).filter(pk=job_id).first()
    else:
        job = _job_by_prefix(user=user, prefix=job_id)
    if job is None:
        raise NotFound(f"Job {_shown(job_id)} not found (or you have no access to it).")
    return job


def _shown(job_id: uuid.UUID | str) -> str:
    return job_id.hex if isinstance(job_id, uuid.UUID) else job_id


def _job_by_prefix(*, user, prefix: str) -> Job | None:
    if len(prefix) < JOB_ID_MIN_PREFIX:
        raise ValidationFailed(
            f"Job id `{prefix}` is too short: give at least {JOB_ID_MIN_PREFIX} of its hex digits, or all 32 "
            "(`pefthub jobs ls` lists them).",
            code="invalid_job_id", detail={"min_length": JOB_ID_MIN_PREFIX},
        )
    low, high = uuid.UUID(prefix.ljust(32, "0")), uuid.UUID(prefix.ljust(32, "f"))
    matches = list(visible_jobs(user).filter(pk__gte=low, pk__lte=high).order_by("-created_at")[:AMBIGUOUS_SHOWN + 1])
    if len(matches) > 1:
        shown = ", ".join(f"{job.id.hex} ({job.type} → {job.output}, {job.status})" for job in matches[:AMBIGUOUS_SHOWN])
        more = " and more" if len(matches) > AMBIGUOUS_SHOWN else ""
        raise ValidationFailed(
            f"Job id `{prefix}` is ambiguous: it matches {shown}{more}. Give more of its digits, or the full id.",
            code="ambiguous_job_id", detail={"matches": [job.id.hex for job in matches[:AMBIGUOUS_SHOWN]]},
        )
    return matches[0] if matches else None
