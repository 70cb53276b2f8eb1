"""The job endpoints of docs/api.md ("Jobs"), in memory, on top of :class:`FakeHub`.

Only the user side (submit, list, detail, events, cancel): workers are the real
server's business. ``ticks`` scripts what happens between polls: each GET of a job
or of its events first runs (and drops) the next tick.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from .fakes import FakeHub, Reply, Seen, error

FINISHED = {"succeeded", "failed", "cancelled"}


class FakeJobs:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.keys: dict[str, tuple[str, Any]] = {}  # Idempotency-Key -> (job id, body)
        self.ticks: list[Callable[[], None]] = []
        job = r"/api/v1/jobs/(?P<id>[^/]+)"
        for method, pattern, handler in [
            ("POST", r"/api/v1/jobs", self.create),
            ("GET", r"/api/v1/jobs", self.list),
            ("GET", job, self.get),
            ("GET", job + "/events", self.list_events),
            ("POST", job + "/cancel", self.cancel),
        ]:
            hub.server.route(method, pattern, hub._authed(handler))

    # seeding and scripting
    def add(self, **fields: Any) -> dict[str, Any]:
        job_id = fields.pop("id", None) or uuid.uuid4().hex
        spec = fields.pop("spec", None) or {"type": fields.get("type", "train"), "output": fields.get("output", "acme/bot")}
        job = {
            "id": job_id, "type": spec["type"], "status": "queued", "queue": "gpu", "owner": "alice",
            "output": spec.get("output"), "spec": spec, "inputs": {}, "attempt": 0, "max_attempts": 3,
            "progress": {}, "metrics": {}, "result": None, "error": None, "worker": None,
            "created_at": f"2025-01-01T00:00:{len(self.jobs):02d}Z", "started_at": None, "finished_at": None,
            "heartbeat_at": None, "lease_expires_at": None,
        }
        job.update(fields)
        self.jobs[job_id] = job
        self.events[job_id] = []
        return job

    def emit(self, job_id: str, type: str, data: dict[str, Any], *, attempt: int = 1) -> None:
        events = self.events[job_id]
        events.append({"seq": len(events) + 1, "type": type, "attempt": attempt,
                       "time": "2025-01-01T12:00:00Z", "data": data})

    def update(self, job_id: str | None, **fields: Any) -> Callable[[], None]:
        """A tick that sets fields of a job (``None``: the newest job, when the tick runs)
        and emits a status event when the status changes."""
        def tick() -> None:
            key = job_id or next(reversed(self.jobs))
            if "status" in fields and fields["status"] != self.jobs[key]["status"]:
                self.emit(key, "status", {"status": fields["status"]})
            self.jobs[key].update(fields)
        return tick

    def _tick(self) -> None:
        if self.ticks:
            self.ticks.pop(0)()

    # API
    def create(self, seen: Seen, match: re.Match[str]) -> Reply:
        body = json.loads(seen.body)
        key = seen.header("Idempotency-Key")
        if key and key in self.keys:
            job_id, first = self.keys[key]
            if first != body:
                return error(409, "conflict", "this Idempotency-Key was used with another body")
            return Reply(200, self.jobs[job_id])
        spec = {k: v for k, v in body.items() if k not in ("queue", "max_attempts")}
        job = self.add(spec=spec, queue=body.get("queue") or ("gpu" if spec["type"] == "train" else "cpu"),
                       max_attempts=body.get("max_attempts", 3))
        if key:
            self.keys[key] = (job["id"], body)
        return Reply(201, job)

    def list(self, seen: Seen, match: re.Match[str]) -> Reply:
        items = [j for j in reversed(list(self.jobs.values()))
                 if all(j[k] == seen.query[k] for k in ("status", "type", "output") if k in seen.query)]
        page, size = int(seen.query.get("page", 1)), int(seen.query.get("page_size", 2))
        more = page * size < len(items)
        nxt = f"http://internal.invalid:9/api/v1/jobs?page={page + 1}&page_size={size}" if more else None
        return Reply(200, {"count": len(items), "next": nxt, "previous": None,
                           "results": items[(page - 1) * size : page * size]})

    def get(self, seen: Seen, match: re.Match[str]) -> Reply:
        self._tick()
        job = self.jobs.get(match["id"])
        return Reply(200, job) if job else error(404, "not_found", "no such job")

    def list_events(self, seen: Seen, match: re.Match[str]) -> Reply:
        self._tick()
        if match["id"] not in self.jobs:
            return error(404, "not_found", "no such job")
        after, limit = int(seen.query.get("after", 0)), int(seen.query.get("limit", 100))
        page = [e for e in self.events[match["id"]] if e["seq"] > after][:limit]
        return Reply(200, {"events": page, "next_after": page[-1]["seq"] if page else after,
                           "status": self.jobs[match["id"]]["status"]})

    def cancel(self, seen: Seen, match: re.Match[str]) -> Reply:
        job = self.jobs.get(match["id"])
        if not job:
            return error(404, "not_found", "no such job")
        if job["status"] in FINISHED:
            return error(409, "conflict", f"job {job['id']} has already {job['status']}")
        status = "cancelled" if job["status"] == "queued" else "cancel_requested"
        self.emit(job["id"], "status", {"status": status})
        job["status"] = status
        return Reply(200, job)
