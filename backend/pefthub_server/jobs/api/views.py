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
from pefthub_server.core.auth import job_token, require_job_token, require_scope
from pefthub_server.core.errors import ValidationFailed
from pefthub_server.core.http import base_url, choice_param, validated
from pefthub_server.core.pagination import PAGE_PARAMETERS, Pagination, paginated
from pefthub_server.core.schema import errors
from pefthub_server.jobs import checkpoints, selectors, services
from pefthub_server.jobs.api import serializers as s
from pefthub_server.jobs.models import Job, JobCheckpoint, JobEvent
from pefthub_server.registry.api.serializers import VersionDetailSerializer
from pefthub_server.registry.api.views import version_detail_data
from pefthub_server.registry.storage import get_blob_store


def _job_data(job: Job) -> dict:
    """The job as it is now in the database (a service may have changed it)."""
    fresh = Job.objects.select_related("namespace", "owner", "result_version__repository__namespace").get(pk=job.pk)
    return s.JobSerializer.placed(fresh).data


def _job_body(request, serializer_class, action: str) -> dict:
    """The body of a call a job makes about itself, which only its own job token may make."""
    require_job_token(request, action)
    return validated(serializer_class, request.data)


def own_job(request, job, job_id, **_) -> bool:
    """The job-token rule of the views about one job (and its parts: a checkpoint's step): a job token
    acts on its own job only."""
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
        latest = checkpoints.latest_checkpoint(job)
        return Response({"job": _job_data(job), "attempt": job.attempt, "token": secret, "lease_seconds": lease,
                         "heartbeat_seconds": max(lease / 4, 0.5),
                         "checkpoint": _checkpoint_data(latest) if latest is not None else None})


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


# --- checkpoints ------------------------------------------------------------------------------


def _checkpoint_data(checkpoint: JobCheckpoint) -> dict:
    return {"step": checkpoint.step, "attempt": checkpoint.attempt, "metrics": checkpoint.metrics,
            "size": checkpoint.size, "created_at": checkpoint.created_at}


def _attempt(request) -> int:
    data = request.data if isinstance(request.data, dict) else {}
    return validated(s.HeartbeatRequestSerializer, {"attempt": data.get("attempt")})["attempt"]


class JobCheckpointListView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="A job's checkpoints, newest first (whoever may see the job)", operation_id="v1_jobs_checkpoints_list",
                   responses={200: s.CheckpointSerializer(many=True), **errors(404)})
    def get(self, request, job_id):
        job = selectors.job_get(user=request.user, job_id=job_id)
        return Response([_checkpoint_data(c) for c in JobCheckpoint.objects.filter(job=job).order_by("-step")])

    @extend_schema(summary="Record a checkpoint from uploaded blobs (the current attempt's job token)",
                   request=s.CheckpointCreateSerializer, responses={201: s.CheckpointSerializer, **errors(409)})
    def post(self, request, job_id):
        require_job_token(request, "record checkpoints")
        data = validated(s.CheckpointCreateSerializer, request.data)
        checkpoint = checkpoints.checkpoint_record(job_id=job_id, attempt=data["attempt"], step=data["step"],
                                                   files=data["files"], metrics=data["metrics"])
        return Response(_checkpoint_data(checkpoint), status=201)


class JobCheckpointUploadView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="Negotiate a checkpoint's upload: which blobs are missing and where to put them (job token)",
                   request=s.CheckpointUploadRequestSerializer,
                   responses={200: s.CheckpointUploadResponseSerializer, **errors(409)})
    def post(self, request, job_id):
        require_job_token(request, "upload checkpoints")
        files = request.data.get("files") if isinstance(request.data, dict) else None
        return Response(checkpoints.checkpoint_negotiate(job_id=job_id, attempt=_attempt(request), files=files,
                                                         base_url=base_url(request)))


class JobCheckpointDetailView(APIView):
    job_token_rule = staticmethod(own_job)

    @extend_schema(summary="A checkpoint with download URLs for its files (the job's owner, or the job's token to resume)",
                   responses={200: s.CheckpointDetailSerializer, **errors(403, 404)})
    def get(self, request, job_id, step):
        job = selectors.job_get(user=request.user, job_id=job_id)
        checkpoints.require_checkpoint_reader(user=request.user, job=job, job_token=job_token(request) is not None)
        checkpoint = checkpoints.checkpoint_get(job=job, step=step)
        store, root = get_blob_store(), base_url(request)
        return Response({**_checkpoint_data(checkpoint), "files": [
            {"path": f.path, "sha256": f.blob_id, "size": f.size,
             "url": store.download_url(f.blob_id, base_url=root, filename=f.path.rsplit("/", 1)[-1],
                                       expires=settings.PEFTHUB_URL_TTL)}
            for f in checkpoint.files.order_by("path")]})


class JobCheckpointPromoteView(APIView):
    @extend_schema(summary="Make a version of an adapter repository from a checkpoint's adapter files",
                   request=s.PromoteRequestSerializer,
                   responses={201: VersionDetailSerializer, 200: VersionDetailSerializer, **errors(403, 404)})
    def post(self, request, job_id, step):
        require_scope(request, "write", "promote checkpoints")
        job = selectors.job_get(user=request.user, job_id=job_id)
        data = validated(s.PromoteRequestSerializer, request.data)
        version, created = checkpoints.checkpoint_promote(user=request.user, job=job, step=step, **data)
        return Response(version_detail_data(request, version, created=created), status=201 if created else 200)
