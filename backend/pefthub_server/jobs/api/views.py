"""Jobs endpoints: users submit, list, follow and cancel; workers claim; a job's token heartbeats, reports, finishes.

A `worker` token only claims. The claim returns the job's own token, and the job's other
worker calls (heartbeat, events, complete, fail) take that token and no other: a worker
node cannot touch a job it does not hold.

A user names a job (show, events, cancel) by its id or by a prefix of it, resolved by
``selectors.job_get`` among the jobs the caller may see; a worker's calls take the full id
(a job token's rule, ``own_job``, matches only its own job's full id).
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from pefthub.protocol.limits import MAX_EVENTS_PER_BATCH
from pefthub_server.core.auth import require_job_token, require_scope
from pefthub_server.core.errors import ValidationFailed
from pefthub_server.core.http import choice_param, validated
from pefthub_server.core.pagination import PAGE_PARAMETERS, Pagination, paginated
from pefthub_server.core.schema import errors
from pefthub_server.jobs import selectors, services
from pefthub_server.jobs.api import serializers as s
from pefthub_server.jobs.models import Job, JobEvent


def _job_data(job: Job) -> dict:
    """The job as it is now in the database (a service may have changed it)."""
    fresh = Job.objects.select_related("namespace", "owner", "result_version__repository__namespace").get(pk=job.pk)
    return s.JobSerializer.placed(fresh).data


def _job_body(request, serializer_class, action: str) -> dict:
    """The body of a call a job makes about itself, which only its own job token may make."""
    require_job_token(request, action)
    return validated(serializer_class, request.data)


def own_job(request, job, job_id) -> bool:
    """The job-token rule of the views about one job: a job token acts on its own job only."""
    return job.pk == job_id


class JobListView(APIView):
    @extend_schema(
        summary="Jobs you may see, newest first", operation_id="v1_jobs_list",
        parameters=[OpenApiParameter("status", str, enum=Job.Status.values), OpenApiParameter("type", str, enum=Job.Type.values),
                    OpenApiParameter("output", str, description="`namespace/name` of the output repository")]
        + PAGE_PARAMETERS,
        responses={200: paginated(s.JobSerializer), **errors(404)},
    )
    def get(self, request):
        require_scope(request, "read", "list jobs")
        qs = selectors.visible_jobs(request.user)
        q = request.query_params
        if status := choice_param(request, "status", Job.Status.values):
            qs = qs.filter(status=status)
        if job_type := choice_param(request, "type", Job.Type.values):
            qs = qs.filter(type=job_type)
        if q.get("output"):
            ns, _, name = q["output"].partition("/")
            qs = qs.filter(namespace__name=ns, output_name=name)
        paginator = Pagination()
        page = paginator.paginate_queryset(qs.order_by("-created_at"), request, view=self)
        return paginator.get_paginated_response(s.JobSerializer.placed(page, many=True).data)

    @extend_schema(
        summary="Submit a train, merge or eval job (send Idempotency-Key to make retries safe)",
        request=s.JobCreateSerializer, responses={201: s.JobSerializer, 200: s.JobSerializer, **errors(409)},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
    )
    def post(self, request):
        require_scope(request, "write", "submit jobs")
        job, created = services.job_create(
            user=request.user, body=request.data, idempotency_key=request.headers.get("Idempotency-Key"))
        return Response(_job_data(job), status=201 if created else 200)


class JobDetailView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="A job, by its id or a prefix of it (at least 8 hex digits) that names one job you may see",
                   responses=s.JobSerializer)
    def get(self, request, job_id):
        return Response(s.JobSerializer.placed(selectors.job_get(user=request.user, job_id=job_id)).data)


class JobEventsView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(
        summary="A job's events after a sequence number (GET); a worker's batch of events (POST)",
        parameters=[OpenApiParameter("after", int, description="Events with a sequence number above this one"),
                    OpenApiParameter("limit", int, description=f"At most this many events (1 to {MAX_EVENTS_PER_BATCH})")],
        responses=s.EventPageSerializer,
    )
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        try:
            after = int(request.query_params.get("after", 0))
            limit = min(max(int(request.query_params.get("limit", 500)), 1), MAX_EVENTS_PER_BATCH)
        except ValueError:
            raise ValidationFailed("`after` and `limit` must be integers.") from None
        events = list(JobEvent.objects.filter(job=job, seq__gt=after).order_by("seq")[:limit])
        return Response({
            "events": s.JobEventSerializer(events, many=True).data,
            "next_after": events[-1].seq if events else after,
            "status": job.status,
        })

    @extend_schema(summary="Append events (worker)", request=s.EventsRequestSerializer,
                   responses={200: s.EventsAppendedSerializer, **errors(409)})
    def post(self, request, job_id):
        require_job_token(request, "report job events")
        data = request.data if isinstance(request.data, dict) else {}
        attempt = validated(s.HeartbeatRequestSerializer, {"attempt": data.get("attempt")})["attempt"]
        last = services.job_events_append(job_id=job_id, attempt=attempt, events=data.get("events"))
        return Response({"last_seq": last})


class JobCancelView(APIView):
    @extend_schema(summary="Cancel a job", request=None, responses={200: s.JobSerializer, **errors(409)})
    def post(self, request, job_id):
        require_scope(request, "write", "cancel jobs")
        job = services.job_cancel(user=request.user, job=selectors.job_get(user=request.user, job_id=job_id))
        return Response(_job_data(job))


class JobClaimView(APIView):
    @extend_schema(summary="Claim a queued job (worker)", request=s.ClaimRequestSerializer,
                   responses={200: s.ClaimSerializer, **errors(409)})
    def post(self, request, job_id):
        require_scope(request, "worker", "claim jobs")
        data = validated(s.ClaimRequestSerializer, request.data)
        job, secret = services.job_claim(job_id=job_id, worker=data["worker"], capabilities=data.get("capabilities"))
        lease = settings.PEFTHUB_JOB_LEASE_SECONDS
        return Response({"job": _job_data(job), "attempt": job.attempt, "token": secret, "lease_seconds": lease,
                         "heartbeat_seconds": max(lease / 4, 0.5)})


class WorkerHelloView(APIView):
    @extend_schema(summary="Say a worker is connected, with its capabilities (worker); sends it the waiting jobs it can run",
                   request=s.HelloRequestSerializer, responses={200: s.HelloSerializer, **errors(400)})
    def post(self, request):
        require_scope(request, "worker", "say hello as a worker")
        data = validated(s.HelloRequestSerializer, request.data)
        return Response(services.worker_hello(name=data["worker"], capabilities=data["capabilities"]))


class JobHeartbeatView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="Extend the lease (worker)", request=s.HeartbeatRequestSerializer,
                   responses={200: s.HeartbeatSerializer, **errors(409)})
    def post(self, request, job_id):
        data = _job_body(request, s.HeartbeatRequestSerializer, "heartbeat the job")
        job = services.job_heartbeat(job_id=job_id, attempt=data["attempt"], progress=data.get("progress"))
        return Response({"cancel_requested": job.status == Job.Status.CANCEL_REQUESTED,
                         "lease_expires_at": job.lease_expires_at})


class JobCompleteView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="Finish a job with its result version, or an eval job with its metrics (worker)",
                   request=s.CompleteRequestSerializer, responses={200: s.JobSerializer, **errors(409)})
    def post(self, request, job_id):
        data = _job_body(request, s.CompleteRequestSerializer, "complete the job")
        job = services.job_complete(job_id=job_id, attempt=data["attempt"], version_number=data["version"],
                                    metrics=data["metrics"])
        return Response(_job_data(job))


class JobFailView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="Report a failed attempt (worker)", request=s.FailRequestSerializer,
                   responses={200: s.JobSerializer, **errors(409)})
    def post(self, request, job_id):
        data = _job_body(request, s.FailRequestSerializer, "fail the job")
        job = services.job_fail(job_id=job_id, **data)
        return Response(_job_data(job))
