"""Job lifecycle: submit, route, claim, heartbeat, events, complete, fail, cancel, reap; workers' hellos.

State changes are conditional updates or run under a row lock, so a job is claimed by
one worker at a time, its events get gap-free sequence numbers, and a job produces at
most one result version (``Version.job`` is unique).

Routing by capability: a job states its needs at submit (``Job.needs``, from
:func:`pefthub.protocol.capabilities.job_needs`); workers say hello with their
capabilities (``Worker``). A job with needs is sent to its queue when every connected
worker there can run it, to the direct queue of one that can when only some can, and
nowhere when none can: it stays queued with ``waiting_for`` until a worker that can run
it says hello, which sends it the job. A claim whose capabilities miss the job's needs
is refused (409 ``needs_unmet``) and the job routed again, so it never fails for want
of a capable worker and burns no attempt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from pefthub.protocol.capabilities import check_capabilities, direct_queue, job_needs, unmet, waiting_reason
from pefthub.protocol.errors import SpecError
from pefthub.protocol.jobs import EVAL, MERGE, PROGRESS_KEYS, TRAIN, WORKER_EVENT_TYPES
from pefthub.protocol.limits import MAX_EVENTS_PER_BATCH, MAX_IDEMPOTENCY_KEY_LENGTH
from pefthub.protocol.peft import MERGE_JOB_TYPES, VIRTUAL_TOKEN_METHODS
from pefthub.protocol.refs import parse_ref
from pefthub.protocol.specs import (
    EvalSpec,
    MergeSpec,
    TrainSpec,
    check_eval_metrics,
    continued_hyperparameters,
    parse_job_request,
)
from pefthub.protocol.words import with_article
from pefthub_server.core import metrics
from pefthub_server.core.errors import Conflict, HubError, NotFound, ValidationFailed
from pefthub_server.core.models import ApiToken
from pefthub_server.core.tokens import job_token_create
from pefthub_server.jobs.dispatch import job_dispatch
from pefthub_server.jobs.models import Job, JobEvent, Worker
from pefthub_server.registry import compatibility
from pefthub_server.registry.blobs import adapter_weights_header
from pefthub_server.registry.models import Evaluation, Namespace, Repository, Role, Version, VersionFile
from pefthub_server.registry.selectors import (
    namespace_role,
    readable_repositories,
    repository_get,
    require_namespace_role,
    version_resolve,
)

log = logging.getLogger(__name__)


def _pin(version: Version) -> dict:
    return {"repo": version.repository.full_name, "number": version.number, "digest": f"sha256:{version.digest}"}


def _readable_version(*, user, ref: str, field: str, kind: str) -> Version:
    parsed = parse_ref(ref, field=field)
    try:
        repo = repository_get(user=user, namespace=parsed.namespace, name=parsed.name)
        version = version_resolve(repo=repo, revision=parsed.revision)
    except NotFound as exc:
        raise ValidationFailed(f"{field}: {exc.message}", code="invalid_spec", detail={"field": field}) from None
    if repo.kind != kind:
        raise ValidationFailed(f"{field} `{repo.full_name}` is {with_article(repo.kind)} repository, not {with_article(kind)}.",
                               code="invalid_spec", detail={"field": field})
    return version


def _output_namespace(*, user, output: str, kind: str, base: Repository | None) -> tuple[Namespace, str]:
    ns_name, _, name = output.partition("/")
    ns = Namespace.objects.filter(name=ns_name).first()
    if ns is None or namespace_role(user, ns) is None:
        raise ValidationFailed(f"output: namespace `{ns_name}` not found (or you are not a member).",
                               code="invalid_spec", detail={"field": "output"})
    require_namespace_role(user, ns, Role.WRITE, action=f"write `{output}`")
    existing = Repository.objects.filter(namespace=ns, name__iexact=name).select_related("base_model__namespace").first()
    if existing is not None:
        if existing.name != name:
            raise ValidationFailed(
                f"output `{output}`: repository `{existing.full_name}` exists and names may not differ only in case; "
                f"use `{existing.full_name}` or another name.", code="invalid_spec", detail={"field": "output"})
        if existing.kind != kind:
            raise ValidationFailed(f"output `{output}` is {with_article(existing.kind)} repository; this job writes {with_article(kind)}.",
                                   code="invalid_spec", detail={"field": "output"})
        if base is not None and existing.base_model_id not in (None, base.pk):
            raise ValidationFailed(
                f"output `{output}` is filed against base `{existing.base_model.full_name}`, not `{base.full_name}`.",
                code="invalid_spec", detail={"field": "output"})
    return ns, name


def _check_train(*, user, spec: TrainSpec, given: set[str]) -> tuple[TrainSpec, dict, Namespace, str, dict]:
    """(the spec as the job runs it, pinned inputs, output namespace and name, needs); ``given``: the hyperparameters
    the submitter set, which a continued adapter's own do not replace."""
    base = _readable_version(user=user, ref=spec.base_model, field="base_model", kind=Repository.Kind.MODEL)
    dataset = _readable_version(user=user, ref=spec.dataset, field="dataset", kind=Repository.Kind.DATASET)
    inputs = {"base_model": _pin(base), "dataset": _pin(dataset)}
    if spec.continue_from:
        parent = _continued(user=user, spec=spec, base=base)
        spec = dataclasses.replace(spec, hyperparameters=continued_hyperparameters(
            spec.method, spec.hyperparameters, given, parent.adapter_config or {}, label=str(parent)))
        inputs["continue_from"] = _pin(parent)
    targets = spec.hyperparameters.target_modules
    if targets is not None and spec.method not in VIRTUAL_TOKEN_METHODS:
        try:
            compatibility.check_adapter_against_base(
                {"peft_type": "LORA", "target_modules": targets}, {}, base.fingerprint or {},
                base_label=f"{base.repository.full_name}@{base.number}")
        except ValidationFailed as exc:
            raise ValidationFailed(f"hyperparameters.target_modules: {exc.message}", code="invalid_spec",
                                   detail={"field": "hyperparameters.target_modules", **(exc.detail or {})}) from None
    ns, name = _output_namespace(user=user, output=spec.output, kind=Repository.Kind.ADAPTER, base=base.repository)
    return spec, inputs, ns, name, job_needs(type=TRAIN, method=spec.method)


def _continued(*, user, spec: TrainSpec, base: Version) -> Version:
    """The adapter version ``continue_from`` names: readable by ``user``, filed against the job's base repository
    and fitting the job's base version (checked at its push against the version it was filed with)."""
    field = "continue_from"
    parent = _readable_version(user=user, ref=spec.continue_from, field=field, kind=Repository.Kind.ADAPTER)
    parent_base, job_base = parent.base_version, f"{base.repository.full_name}@{base.number}"
    if parent_base.repository_id != base.repository_id:
        raise ValidationFailed(
            f"continue_from `{parent}` is an adapter of base `{parent_base.repository.full_name}`, but this job trains on "
            f"`{job_base}`; continue it on its own base (base_model `{parent_base.repository.full_name}`) or train a "
            "fresh adapter on this one.", code="invalid_spec", detail={"field": field})
    if parent_base.pk != base.pk:
        try:
            compatibility.check_adapter_against_base(
                parent.adapter_config or {}, adapter_weights_header(parent), base.fingerprint or {},
                base_label=job_base)
        except ValidationFailed as exc:
            raise ValidationFailed(
                f"continue_from `{parent}` was trained on `{parent_base.repository.full_name}@{parent_base.number}` and "
                f"does not fit `{job_base}`: {exc.message}. Continue it on base_model "
                f"`{parent_base.repository.full_name}@{parent_base.number}`.",
                code="invalid_spec", detail={"field": field, **(exc.detail or {})}) from None
    return parent


def _check_merge(*, user, spec: MergeSpec) -> tuple[MergeSpec, dict, Namespace, str, dict]:
    pinned, base = [], None
    for i, item in enumerate(spec.adapters):
        field = f"adapters[{i}].ref"
        version = _readable_version(user=user, ref=item.ref, field=field, kind=Repository.Kind.ADAPTER)
        peft_type = (version.adapter_config or {}).get("peft_type")
        if peft_type not in MERGE_JOB_TYPES:
            raise ValidationFailed(
                f"{field}: `{version}` is {with_article(str(peft_type))} adapter, which a merge job cannot merge into its base "
                f"(it merges {', '.join(sorted(MERGE_JOB_TYPES))}; DoRA is LORA); load it with peft instead.",
                code="not_mergeable", detail={"field": field})
        if base is None:
            base = version.base_version
        elif version.base_version.repository_id != base.repository_id:
            raise ValidationFailed(
                f"{field}: `{version}` fits base `{version.base_version.repository.full_name}`, but the first adapter "
                f"fits `{base.repository.full_name}`; merged adapters must share one base.",
                code="invalid_spec", detail={"field": field})
        pinned.append({**_pin(version), "weight": item.weight})
    ns, name = _output_namespace(user=user, output=spec.output, kind=Repository.Kind.MODEL, base=None)
    shard = VersionFile.objects.filter(version=base, path__endswith=".safetensors").aggregate(size=Max("size"))["size"]
    return spec, {"base_model": _pin(base), "adapters": pinned}, ns, name, job_needs(type=MERGE, largest_shard=shard)


def _check_eval(*, user, spec: EvalSpec) -> tuple[EvalSpec, dict, Namespace, str, dict]:
    """Read on the adapter, its base and the dataset; write on the adapter's namespace, which gets the metrics."""
    adapter = _readable_version(user=user, ref=spec.adapter, field="adapter", kind=Repository.Kind.ADAPTER)
    dataset = _readable_version(user=user, ref=spec.dataset, field="dataset", kind=Repository.Kind.DATASET)
    repo = adapter.repository
    require_namespace_role(user, repo.namespace, Role.WRITE,
                           action=f"evaluate `{repo.full_name}` (an evaluation attaches its metrics to the version)")
    base = adapter.base_version
    # the adapter's version page names its base to whoever reads the adapter, so naming it here reveals nothing
    if base is None or not readable_repositories(user).filter(pk=base.repository_id).exists():
        label = f"`{base.repository.full_name}@{base.number}`" if base is not None else "no base model version"
        raise ValidationFailed(f"adapter: `{adapter}` fits base {label}, which you cannot read; the worker loads the "
                               "base to score the adapter.", code="invalid_spec", detail={"field": "adapter"})
    inputs = {"adapter": _pin(adapter), "base_model": _pin(base), "dataset": _pin(dataset)}
    return spec, inputs, repo.namespace, repo.name, job_needs(type=EVAL)


def job_create(*, user, body: dict, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Validate a job request, pin its inputs, create the job and enqueue its id after commit."""
    if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH):
        raise ValidationFailed(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
                               code="validation_error")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    if idempotency_key:
        existing = Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.request_digest != digest:
                raise Conflict(f"Idempotency-Key {idempotency_key!r} was used for a different job ({existing.id.hex}).")
            return existing, False
    request = parse_job_request(body)
    if isinstance(request.spec, TrainSpec):
        hyperparameters = body.get("hyperparameters") or {}
        given = {key for key, value in hyperparameters.items() if value is not None}  # parse_job_request: a dict
        spec, inputs, ns, name, needs = _check_train(user=user, spec=request.spec, given=given)
    elif isinstance(request.spec, EvalSpec):
        spec, inputs, ns, name, needs = _check_eval(user=user, spec=request.spec)
    else:
        spec, inputs, ns, name, needs = _check_merge(user=user, spec=request.spec)
    try:
        with transaction.atomic():
            job = Job.objects.create(
                type=request.type, queue=request.queue, owner=user, namespace=ns, output_name=name,
                spec=spec.to_dict(), inputs=inputs, idempotency_key=idempotency_key or None,
                request_digest=digest, max_attempts=request.max_attempts, needs=needs,
            )
            _enqueue(job, first=True)
            _event(job, JobEvent.Type.STATUS, _queued(job))
    except IntegrityError:
        # Two requests raced with one key: the loser returns the winner's job.
        if idempotency_key and (winner := Job.objects.filter(owner=user, idempotency_key=idempotency_key).first()):
            return winner, False
        raise
    return job, True


def _event(job: Job, type: str, data: dict, *, attempt: int | None = None) -> JobEvent:
    """Append one event; the caller holds the job row (or created it in this transaction)."""
    seq = Job.objects.filter(pk=job.pk).values_list("last_seq", flat=True).get() + 1
    Job.objects.filter(pk=job.pk).update(last_seq=seq)
    job.last_seq = seq
    return JobEvent.objects.create(job=job, seq=seq, type=type, data=data, time=timezone.now(),
                                   attempt=job.attempt if attempt is None else attempt)


def _queued(job: Job, **more) -> dict:
    """A ``queued`` status event's data, saying what the job waits for when no connected worker can run it."""
    return {"status": Job.Status.QUEUED, **more, **({"waiting_for": job.waiting_for} if job.waiting_for else {})}


def _connected_workers(queue: str) -> list[Worker]:
    seen = timezone.now() - timedelta(seconds=settings.PEFTHUB_WORKER_PRESENCE_SECONDS)
    # the table holds one row per worker: filtered here, as SQLite has no JSON containment
    return [w for w in Worker.objects.filter(last_seen__gte=seen).order_by("name") if queue in w.queues]


def _route(job: Job, *, shared: bool = True) -> str | None:
    """Where the job's id goes now, setting ``job.waiting_for``; None: nowhere, it waits for a capable worker.

    A job without needs goes to its queue. One with needs goes there when every connected
    worker on the queue can run it (and ``shared``), to one capable worker's direct queue when
    only some can (the others would refuse it), and nowhere when none can. After a refusal
    ``shared`` is False: the refusing worker (one that never said hello, say) may consume the
    shared queue too, and must not get the job back.
    """
    job.waiting_for = ""
    if not job.needs:
        return job.queue
    connected = _connected_workers(job.queue)
    capable = [w for w in connected if not unmet(job.needs, w.capabilities)]
    if not capable:
        job.waiting_for = waiting_reason(job.needs)
        return None
    if shared and len(capable) == len(connected):
        return job.queue
    return direct_queue(random.choice(capable).name)


def _enqueue(job: Job, *, first: bool, shared: bool = True) -> str | None:
    """Route the job, record the send and send it once the transaction commits; the queue it goes to, or None.

    ``first``: the job (re-)entered the queue (its place in it starts now); otherwise the
    reaper sends it again because no worker took it (its message may be lost), or a
    worker that cannot run it refused it.
    """
    now = timezone.now()
    queue = _route(job, shared=shared)
    job.dispatched_at = now
    job.dispatches = 1 if first else job.dispatches + 1
    fields = ["dispatched_at", "dispatches", "waiting_for"]
    if first:
        job.queued_at = now
        fields.append("queued_at")
    job.save(update_fields=fields)
    if queue is not None:
        transaction.on_commit(lambda: job_dispatch(job=job, queue=queue))
    return queue


def _lease() -> timedelta:
    return timedelta(seconds=settings.PEFTHUB_JOB_LEASE_SECONDS)


def _extend_lease(job: Job, now) -> None:
    """The lease and the job token's life, moved together: the token dies with a lapsed lease."""
    lease = now + _lease()
    Job.objects.filter(pk=job.pk).update(heartbeat_at=now, lease_expires_at=lease)
    ApiToken.objects.filter(pk=job.token_id, revoked_at__isnull=True).update(expires_at=lease)
    job.heartbeat_at, job.lease_expires_at = now, lease


def _worker_seen(*, name: str, capabilities: dict, now) -> Worker:
    worker, _ = Worker.objects.update_or_create(name=name[:200], defaults={"capabilities": capabilities, "last_seen": now})
    return worker


def worker_hello(*, name: str, capabilities) -> dict:
    """Record that worker ``name`` is connected with ``capabilities``; send it the waiting jobs it can run.

    Returns how many jobs it was sent and how often it should say hello again.
    """
    capabilities = check_capabilities(capabilities)
    worker = _worker_seen(name=name, capabilities=capabilities, now=timezone.now())
    waiting = (Job.objects.filter(status=Job.Status.QUEUED, queue__in=worker.queues).exclude(waiting_for="")
               .order_by("queued_at", "id").values_list("pk", flat=True))
    sent = 0
    for pk in list(waiting):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=pk, status=Job.Status.QUEUED).exclude(waiting_for="").first()
            if job is None or unmet(job.needs, capabilities):
                continue  # claimed, cancelled or sent meanwhile; or this worker cannot run it either
            reason = job.waiting_for
            job.waiting_for, job.dispatched_at, job.dispatches = "", timezone.now(), job.dispatches + 1
            job.save(update_fields=["waiting_for", "dispatched_at", "dispatches"])
            queue = direct_queue(worker.name)
            transaction.on_commit(lambda job=job, queue=queue: job_dispatch(job=job, queue=queue))
            _event(job, JobEvent.Type.LOG, {"level": "info", "message": (
                f"worker {worker.name} can run the job (it waited for {reason}); sent the job to it")})
            sent += 1
    return {"sent": sent, "hello_seconds": max(settings.PEFTHUB_WORKER_PRESENCE_SECONDS / 3, 0.5)}


def _refuse_needs(job_id, *, worker: str, capabilities: dict) -> None:
    """Refuse a claim by a worker that cannot run the job (409 ``needs_unmet``), routing the job again first."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.QUEUED).first()
        missing = unmet(job.needs, capabilities) if job is not None else []
        if missing:
            was = job.waiting_for
            _enqueue(job, first=False, shared=False)
            if job.waiting_for and job.waiting_for != was:
                _event(job, JobEvent.Type.STATUS, _queued(job, reason=f"worker {worker} refused it: it has no {' and no '.join(missing)}"))
    if missing:
        raise HubError(
            f"Job {job.id.hex} needs {waiting_reason(job.needs)}; worker `{worker}` has no {' and no '.join(missing)} "
            "(as it reported). It stays queued for a worker that can run it; take the next job.",
            code="needs_unmet", status=409, detail={"needs": job.needs, "missing": missing})


def job_claim(*, job_id, worker: str, capabilities: dict | None = None) -> tuple[Job, str]:
    """Atomically move a queued job to running; returns the job and its job token.

    ``capabilities`` (what the worker reported) must meet the job's needs, else the claim is
    refused with 409 ``needs_unmet`` and the job stays queued; a claim counts as a hello.
    The job token acts for the job's owner but only on this job (core.auth.JobTokenPolicy):
    it reads the pinned inputs, pushes the result, reports; it expires with the lease and is
    revoked when the attempt ends.
    """
    capabilities = check_capabilities(capabilities or {})
    now = timezone.now()
    if capabilities:
        _worker_seen(name=worker, capabilities=capabilities, now=now)
    _refuse_needs(job_id, worker=worker, capabilities=capabilities)
    with transaction.atomic():
        claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.RUNNING, attempt=F("attempt") + 1, worker=worker[:200], heartbeat_at=now,
            lease_expires_at=now + _lease(), started_at=now, waiting_for="",
        )
        job = Job.objects.select_for_update().select_related("namespace", "owner").filter(pk=job_id).first()
        if job is None:
            raise NotFound(f"Job {job_id} not found.")
        if not claimed:
            raise Conflict(f"Job {job.id.hex} is {job.status}, not queued; another worker has it or it ended.",
                           detail={"status": job.status})
        token, secret = job_token_create(user=job.owner, name=f"job:{job.id.hex[:12]}", expires_at=job.lease_expires_at)
        job.token = token
        job.save(update_fields=["token"])
        _event(job, JobEvent.Type.STATUS, {"status": Job.Status.RUNNING, "worker": job.worker})
    return job, secret


def _active(job_id, attempt) -> Job:
    """The running job under a row lock, if ``attempt`` is still its current attempt."""
    job = Job.objects.select_for_update().select_related("namespace").filter(pk=job_id).first()
    if job is None:
        raise NotFound(f"Job {job_id} not found.")
    if job.status not in Job.ACTIVE or job.attempt != attempt:
        raise HubError(f"Attempt {attempt} of job {job.id.hex} no longer holds it (status {job.status}, "
                       f"attempt {job.attempt}); stop working on it.", code="lease_lost", status=409)
    return job


def job_heartbeat(*, job_id, attempt: int, progress: dict | None = None) -> Job:
    with transaction.atomic():
        job = _active(job_id, attempt)
        _extend_lease(job, timezone.now())
        if isinstance(progress, dict):
            job.progress = {**job.progress, **progress}
            job.save(update_fields=["progress"])
    metrics.heartbeat_received(job.worker, time.time())
    return job


def _event_time(event: dict, now):
    """The worker's own timestamp (when the thing happened), if it is a sane one; else arrival time."""
    stamp = parse_datetime(event["time"]) if isinstance(event.get("time"), str) else None
    if stamp is None or stamp.tzinfo is None or abs((now - stamp).total_seconds()) > 24 * 3600:
        return now
    return stamp


def job_events_append(*, job_id, attempt: int, events) -> int:
    if not isinstance(events, list) or not events or len(events) > MAX_EVENTS_PER_BATCH:
        raise ValidationFailed(f"events must be a list of 1 to {MAX_EVENTS_PER_BATCH} events.")
    with transaction.atomic():
        job = _active(job_id, attempt)
        rows, seq, now = [], job.last_seq, timezone.now()
        progress, metrics = dict(job.progress), dict(job.metrics)
        for i, event in enumerate(events):
            kind = event.get("type") if isinstance(event, dict) else None
            data = event.get("data", {}) if isinstance(event, dict) else None
            if kind not in WORKER_EVENT_TYPES or not isinstance(data, dict):
                raise ValidationFailed(
                    f"events[{i}] must be {{type, data}} with type log, metric, checkpoint or artifact and data an object.")
            if kind == JobEvent.Type.METRIC:
                for key, value in data.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                        (progress if key in PROGRESS_KEYS else metrics)[key] = value
            seq += 1
            rows.append(JobEvent(job=job, seq=seq, type=kind, data=data, attempt=attempt, time=_event_time(event, now)))
        JobEvent.objects.bulk_create(rows)
        Job.objects.filter(pk=job.pk).update(last_seq=seq, progress=progress, metrics=metrics)
        _extend_lease(job, timezone.now())
    return seq


def _finish(job: Job, status: str, *, error: dict | None = None, reason: str | None = None) -> None:
    job.status, job.error, job.finished_at = status, error, timezone.now()
    job.lease_expires_at = None
    job.save(update_fields=["status", "error", "finished_at", "lease_expires_at"])
    if job.token_id:
        ApiToken.objects.filter(pk=job.token_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _event(job, JobEvent.Type.STATUS, {"status": status, **({"reason": reason} if reason else {}),
                                       **({"error": error} if error else {})})


def job_complete(*, job_id, attempt: int, version_number=None, metrics=None) -> Job:
    """Finish a job with its result: a train or merge job's pushed version, an eval job's metrics."""
    with transaction.atomic():
        job = _active(job_id, attempt)
        if job.type == Job.Type.EVAL:
            _attach_evaluation(job, version_number=version_number, metrics=metrics)
            _finish(job, Job.Status.SUCCEEDED)
            return job
        if metrics is not None:
            raise ValidationFailed(f"{with_article(job.type).capitalize()} job completes with its result version, not "
                                   "metrics; send `version`.",
                                   detail={"field": "metrics"})
        version = Version.objects.filter(job=job).select_related("repository__namespace").first()
        if version is None or version.number != version_number:
            raise ValidationFailed(
                f"Job {job.id.hex} has no result version {version_number}; push the result with job={job.id.hex} first.")
        _event(job, JobEvent.Type.ARTIFACT, _pin(version))
        _finish(job, Job.Status.SUCCEEDED)
    return job


def _attach_evaluation(job: Job, *, version_number, metrics) -> Evaluation:
    """Attach an eval job's metrics to the adapter version it pinned (the job's own, whatever the worker says)."""
    if version_number is not None:
        raise ValidationFailed("An eval job makes no version; complete it with `metrics` only.",
                               detail={"field": "version"})
    try:
        metrics = check_eval_metrics(metrics)
    except SpecError as exc:
        raise ValidationFailed(exc.message, detail={"field": exc.field}) from None
    pin, data = job.inputs["adapter"], job.inputs["dataset"]
    ns, _, name = pin["repo"].partition("/")
    version = Version.objects.filter(repository__namespace__name=ns, repository__name=name, number=pin["number"],
                                     digest=pin["digest"].removeprefix("sha256:")).first()
    if version is None:
        raise ValidationFailed(f"Version {pin['repo']}@{pin['number']} was deleted while the job ran; its metrics "
                               "have nowhere to go.", code="version_gone", detail={"field": "metrics"})
    evaluation = Evaluation.objects.create(
        version=version, job=job, dataset_repo=data["repo"], dataset_number=data["number"],
        dataset_digest=data["digest"].removeprefix("sha256:"), dataset_file=job.spec.get("dataset_file") or "",
        metrics=metrics)
    Job.objects.filter(pk=job.pk).update(metrics=metrics)
    job.metrics = metrics
    _event(job, JobEvent.Type.ARTIFACT, {**pin, "evaluation": metrics})
    return evaluation


def _requeue(job: Job, reason: str) -> None:
    job.status, job.lease_expires_at, job.worker = Job.Status.QUEUED, None, ""
    job.save(update_fields=["status", "lease_expires_at", "worker"])
    if job.token_id:
        ApiToken.objects.filter(pk=job.token_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _enqueue(job, first=True)
    _event(job, JobEvent.Type.STATUS, _queued(job, reason=reason))


def job_fail(*, job_id, attempt: int, code: str, message: str, retryable: bool = False) -> Job:
    error = {"code": str(code)[:64] or "failed", "message": str(message)[:4000]}
    with transaction.atomic():
        job = _active(job_id, attempt)
        if job.status == Job.Status.CANCEL_REQUESTED:
            _finish(job, Job.Status.CANCELLED, reason="cancelled by request")
        elif retryable and job.attempt < job.max_attempts:
            _requeue(job, f"attempt {job.attempt} of {job.max_attempts} failed: {error['message']}")
        else:
            _finish(job, Job.Status.FAILED, error=error)
    return job


def job_cancel(*, user, job: Job) -> Job:
    if job.owner_id != user.id:
        require_namespace_role(user, job.namespace, Role.WRITE, action=f"cancel jobs writing to `{job.output}`")
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("namespace", "owner").get(pk=job.pk)
        if job.status == Job.Status.QUEUED:
            _finish(job, Job.Status.CANCELLED, reason=f"cancelled by {user.username} before it started")
        elif job.status == Job.Status.RUNNING:
            job.status = Job.Status.CANCEL_REQUESTED
            job.save(update_fields=["status"])
            _event(job, JobEvent.Type.STATUS, {"status": job.status, "reason": f"cancel requested by {user.username}"})
        elif job.status != Job.Status.CANCEL_REQUESTED:
            raise Conflict(f"Job {job.id.hex} already ended ({job.status}).")
    return job


#: a job waiting long is re-sent after 1, 2, 4 ... 32 grace periods, not every period: a
#: queue that is only busy holds a few duplicates per job, not one per period
_MAX_REDISPATCH_BACKOFF = 32


def _redispatch_due(job: Job, now) -> bool:
    if job.dispatched_at is None:
        return True  # queued before dispatches were recorded
    backoff = min(2 ** max(job.dispatches - 1, 0), _MAX_REDISPATCH_BACKOFF)
    return now - job.dispatched_at >= timedelta(seconds=settings.PEFTHUB_REDISPATCH_SECONDS * backoff)


def _redispatch(now) -> int:
    """Send again the queued jobs no worker took within the grace period: their message may be lost.

    A duplicate is harmless: the claim is conditional, the second one gets 409 and its
    worker acks it and moves on.
    """
    grace = timedelta(seconds=settings.PEFTHUB_REDISPATCH_SECONDS)
    waiting = Job.objects.filter(status=Job.Status.QUEUED).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=now - grace)).values_list("pk", flat=True)
    sent = 0
    for pk in list(waiting):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=pk, status=Job.Status.QUEUED).first()
            if job is None or not _redispatch_due(job, now):
                continue  # claimed or cancelled meanwhile, or it waits for its backoff
            waited = int((now - job.dispatched_at).total_seconds()) if job.dispatched_at else None
            was = job.waiting_for
            if _enqueue(job, first=False) is None:
                if job.waiting_for != was:  # the workers that could run it left
                    _event(job, JobEvent.Type.STATUS, _queued(job))
                continue
            _event(job, JobEvent.Type.LOG, {"level": "warning", "message": (
                f"no worker took the job {waited} s after it was sent; sent it again (send {job.dispatches})"
                if waited is not None else "sent the job to its queue again")})
            sent += 1
    return sent


def jobs_reap(*, now=None) -> dict:
    """Re-queue running jobs whose lease expired (up to max_attempts), fail the rest; re-send lost queued jobs."""
    now = now or timezone.now()
    # first: a job this round re-queues is sent now, not again
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "redispatched": _redispatch(now)}
    expired = Job.objects.filter(status__in=Job.ACTIVE, lease_expires_at__lt=now).values_list("pk", flat=True)
    for pk in list(expired):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=pk, status__in=Job.ACTIVE, lease_expires_at__lt=now).first()
            if job is None:
                continue  # it heartbeated or ended meanwhile
            seen = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "never"
            why = f"worker {job.worker or '?'} stopped heartbeating (last seen {seen})"
            if job.status == Job.Status.CANCEL_REQUESTED:
                _finish(job, Job.Status.CANCELLED, reason=f"cancelled; {why}")
                counts["cancelled"] += 1
            elif job.attempt < job.max_attempts:
                _requeue(job, f"{why}; attempt {job.attempt} of {job.max_attempts}, re-queued")
                counts["requeued"] += 1
            else:
                _finish(job, Job.Status.FAILED, error={
                    "code": "lease_expired", "message": f"{why}; all {job.max_attempts} attempts used"})
                counts["failed"] += 1
    if any(counts.values()):
        log.info("reaped jobs: %s", counts)
    return counts
