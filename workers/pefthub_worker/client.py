"""The worker's side of the jobs API, typed: claim (worker token), then heartbeat, events, complete, fail (job token).

A worker's own `worker`-scope token only claims. The claim returns the job's token, which
:class:`JobClient` uses for everything about that job: pulling its pinned inputs, pushing
its result, heartbeats, events, complete and fail. Every call goes through
``Hub.request``, the SDK's one request layer (the token, retries with backoff, typed
errors). Two refusals are part of the protocol rather than failures and get their own
exceptions, both a :class:`pefthub.errors.Conflict`: :class:`ClaimRefused` when the job
is not queued (another worker has it, or it ended), and :class:`LeaseLost` when this
attempt no longer holds the job (the server's 409 ``lease_lost``, or a 401 for the job
token, which died when the lease ran out and the job was re-queued or ended).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pefthub import Hub
from pefthub.errors import AuthenticationFailed, Conflict, HubError
from pefthub.protocol.limits import MAX_EVENTS_PER_BATCH


class ClaimRefused(Conflict):
    """The job is not queued (another worker holds it, or it ended), or it needs what this worker lacks
    (``needs_unmet``: the hub keeps it queued for a worker that can run it). There is nothing to do."""


class LeaseLost(Conflict):
    """This attempt no longer holds the job: stop working on it and report nothing more."""


@dataclass(frozen=True)
class Claim:
    """What a successful claim hands the worker."""

    #: the job as the server describes it: ``id``, ``type``, ``spec``, pinned ``inputs`` ...
    job: dict[str, Any]
    #: the attempt number every later call must carry
    attempt: int
    #: the job's token: reads its pinned inputs, pushes its result, reports on the job; dies with the attempt
    token: str
    lease_seconds: float
    heartbeat_seconds: float
    #: the job's newest checkpoint (``step``, ``attempt``, ``metrics`` ...) to resume from, or None
    checkpoint: dict[str, Any] | None = None


@dataclass(frozen=True)
class Hello:
    """The hub's answer to a hello."""

    #: waiting jobs the hub sent to this worker's direct queue
    sent: int
    #: say hello again within this many seconds to count as connected
    hello_seconds: float


@dataclass(frozen=True)
class Heartbeat:
    """The server's answer to a heartbeat."""

    #: the owner asked to cancel: stop at the next step and report ``cancelled``
    cancel_requested: bool
    #: when the lease runs out without another heartbeat or event batch
    lease_expires_at: datetime | None


class WorkerClient:
    """Claims for a ``worker``-scope token, wrapping a :class:`pefthub.Hub`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def hello(self, worker: str, capabilities: dict[str, Any]) -> Hello:
        """Tell the hub this worker is connected and what it can run."""
        reply = self.hub.request("POST", "workers/hello", json={"worker": worker, "capabilities": capabilities})
        return Hello(sent=int(reply["sent"]), hello_seconds=float(reply["hello_seconds"]))

    def claim(self, job_id: str, worker: str, capabilities: dict[str, Any] | None = None) -> Claim:
        """Move the queued job to running under this worker; :class:`ClaimRefused` if it is not queued
        or needs what ``capabilities`` lack."""
        body: dict[str, Any] = {"worker": worker}
        if capabilities is not None:
            body["capabilities"] = capabilities
        try:
            reply = self.hub.request("POST", f"jobs/{job_id}/claim", json=body)
        except Conflict as exc:
            raise _as(ClaimRefused, exc) from exc
        return Claim(
            job=reply["job"],
            attempt=int(reply["attempt"]),
            token=reply["token"],
            lease_seconds=float(reply["lease_seconds"]),
            heartbeat_seconds=float(reply["heartbeat_seconds"]),
            checkpoint=reply.get("checkpoint"),
        )

    def job_client(self, claim: Claim) -> JobClient:
        """The claimed job's client, with its job token (close it when the attempt ends)."""
        return JobClient(Hub(url=self.hub.url, token=claim.token, cache_dir=self.hub.cache_dir, progress=False))


class JobClient:
    """One claimed job's calls, with its job token: ``hub`` pulls the inputs and pushes the result."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def close(self) -> None:
        self.hub.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heartbeat(self, job_id: str, attempt: int, progress: dict[str, Any] | None = None) -> Heartbeat:
        """Extend the lease; ``progress`` (step, total_steps ...) is merged into the job's."""
        body: dict[str, Any] = {"attempt": attempt}
        if progress is not None:
            body["progress"] = progress
        reply = self._post(job_id, "heartbeat", body)
        expires = reply.get("lease_expires_at")
        return Heartbeat(
            cancel_requested=bool(reply.get("cancel_requested")),
            lease_expires_at=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
        )

    def post_events(self, job_id: str, attempt: int, events: list[dict[str, Any]]) -> int | None:
        """Append ``events`` (``{type, data, time}``), in batches the server accepts; the last ``seq``."""
        last = None
        for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
            batch = events[start:start + MAX_EVENTS_PER_BATCH]
            last = self._post(job_id, "events", {"attempt": attempt, "events": batch})["last_seq"]
        return last

    def complete(self, job_id: str, attempt: int, version: int | None = None, *,
                 metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish the job with its result, version ``version`` pushed with ``job=job_id`` (an eval job: its
        ``metrics``, which the hub attaches to the version the job pinned); the job."""
        body: dict[str, Any] = {"attempt": attempt}
        if metrics is not None:
            body["metrics"] = metrics
        else:
            body["version"] = version
        return self._post(job_id, "complete", body)

    def fail(
        self, job_id: str, attempt: int, code: str, message: str, retryable: bool = False
    ) -> dict[str, Any]:
        """Report this attempt failed; a ``retryable`` failure re-queues the job while attempts remain."""
        body = {"attempt": attempt, "code": code, "message": message, "retryable": retryable}
        return self._post(job_id, "fail", body)

    def _post(self, job_id: str, action: str, body: dict[str, Any]) -> Any:
        """POST an attempt's call; a 409 (``lease_lost``) or a dead job token (401) means the attempt lost the job."""
        try:
            return self.hub.request("POST", f"jobs/{job_id}/{action}", json=body)
        except (Conflict, AuthenticationFailed) as exc:
            raise _as(LeaseLost, exc) from exc


def _as(kind: type[Conflict], exc: HubError) -> Conflict:
    """``exc`` as the more precise ``kind``, keeping what the server said."""
    return kind(exc.message, status=exc.status, code=exc.code, detail=exc.detail, request_id=exc.request_id)
