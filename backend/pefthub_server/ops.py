"""Operations endpoints: `/healthz` (the process answers), `/readyz` (its database, broker and blob store answer), `/metrics`.

They are answered by :class:`OperationsMiddleware`, ahead of the host check and the HTTPS
redirect: a Kubernetes probe or a Prometheus scrape reaches a pod by its IP over plain HTTP,
and must get the answer, not a 400 for an unknown Host or a redirect. The same views are in
the URL table (``urls.py``), so they are documented and listed like every route.

`/readyz` checks the three parts at once, each on a thread of its own, and waits at most
``PEFTHUB_READY_TIMEOUT`` seconds (default 2) for all of them: a check still running then
counts as failed (``timed out``). The answer names each part and its kind, and says only that
a part failed and the exception's class, never its message: a driver's message can carry a
host, a user or a DSN. The full error goes to the server log. 200 when all answer, 503 otherwise.

`/metrics` is open to whoever reaches the port unless ``PEFTHUB_METRICS_TOKEN`` is set (then it
needs ``Authorization: Bearer <that token>``); what it holds is in :mod:`pefthub_server.core.metrics`.
"""

from __future__ import annotations

import functools
import hmac
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pefthub_server.core.errors import error_body
from pefthub_server.core.metrics import exposition
from pefthub_server.jobs.models import Job
from pefthub_server.registry.storage import LocalBlobStore, S3BlobStore, get_blob_store

log = logging.getLogger(__name__)


def _only_get(view):
    @functools.wraps(view)
    def answer(request):
        if request.method not in ("GET", "HEAD"):
            return JsonResponse(error_body("method_not_allowed", f"{request.path} answers GET and HEAD only."),
                                status=405, headers={"Allow": "GET, HEAD"})
        return view(request)

    return answer


# --- /healthz, /readyz -----------------------------------------------------------------------


@_only_get
def healthz(request) -> JsonResponse:
    """``GET /healthz``: 200 while the process serves requests; touches nothing else."""
    return JsonResponse({"status": "ok"})


def _database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # this check's own thread: leave no connection behind
    return connection.vendor


def _broker() -> str:
    url = settings.CELERY_BROKER_URL
    if not url:
        with tempfile.NamedTemporaryFile(dir=Path(settings.PEFTHUB_BROKER_DIR), prefix=".readyz-"):
            pass  # the embedded broker is a folder: it must take a file
        return "embedded"
    scheme = url.split("://", 1)[0]
    if scheme not in ("redis", "rediss", "unix"):
        raise NotImplementedError(f"no readiness check for the broker scheme `{scheme}`")
    import redis

    timeout = settings.PEFTHUB_READY_TIMEOUT
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()
    return "redis"


def _storage() -> str:
    store = get_blob_store()
    if isinstance(store, S3BlobStore):
        store.client.head_bucket(Bucket=store.bucket)
        return "s3"
    if isinstance(store, LocalBlobStore):
        store.root.mkdir(parents=True, exist_ok=True)  # a new hub's store: made by its first upload otherwise
        with tempfile.NamedTemporaryFile(dir=store.root, prefix=".readyz-"):
            pass
        return "local"
    raise NotImplementedError(f"no readiness check for {type(store).__name__}")


CHECKS = {"database": _database, "broker": _broker, "storage": _storage}
_pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


def readiness() -> tuple[bool, dict[str, dict]]:
    """(all ready, {part: {"ok", "kind" | "error", "ms"}}) for the database, the broker and the blob store."""
    timeout = settings.PEFTHUB_READY_TIMEOUT
    started = time.monotonic()
    futures = {name: _pool.submit(check) for name, check in CHECKS.items()}
    answer: dict[str, dict] = {}
    for name, future in futures.items():
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            answer[name] = {"ok": True, "kind": future.result(timeout=left)}
        except FutureTimeout:
            answer[name] = {"ok": False, "error": f"timed out after {timeout:g} s"}
            log.warning("readiness: %s did not answer within %g s", name, timeout)
        except Exception as exc:
            answer[name] = {"ok": False, "error": f"unreachable ({type(exc).__name__})"}
            log.warning("readiness: %s failed: %s", name, exc)
        answer[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return all(part["ok"] for part in answer.values()), answer


@_only_get
def readyz(request) -> JsonResponse:
    """``GET /readyz``: 200 ``{"status": "ready", ...}``, or 503 ``{"status": "unavailable", "failed": [...]}``."""
    ok, checks = readiness()
    failed = [name for name, part in checks.items() if not part["ok"]]
    return JsonResponse({"status": "ready" if ok else "unavailable", "failed": failed, "checks": checks},
                        status=200 if ok else 503)


# --- /metrics --------------------------------------------------------------------------------


class JobsCollector:
    """``pefthub_jobs{queue, status}``: one GROUP BY over the jobs table per scrape."""

    def collect(self):
        family = GaugeMetricFamily("pefthub_jobs", "Jobs by queue and status", labels=["queue", "status"])
        counts = {(row["queue"], row["status"]): row["n"]
                  for row in Job.objects.values("queue", "status").annotate(n=Count("id")).order_by()}
        for queue in sorted({queue for queue, _ in counts} | {"gpu", "cpu"}):
            for status in Job.Status.values:
                family.add_metric([queue, status], counts.get((queue, status), 0))
        yield family


@_only_get
def metrics(request) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format."""
    token = settings.PEFTHUB_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            response = JsonResponse(error_body(
                "not_authenticated", "/metrics needs `Authorization: Bearer <token>` with PEFTHUB_METRICS_TOKEN's value."),
                status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(exposition(JobsCollector()), content_type=CONTENT_TYPE_LATEST)


#: path -> view, answered before the host check (OperationsMiddleware) and listed in the URL table (urls.py)
ROUTES = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


class OperationsMiddleware:
    """Answers `/healthz`, `/readyz` and `/metrics` whatever the Host header or scheme; after the request id and access log."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = ROUTES.get(request.path_info)
        return view(request) if view is not None else self.get_response(request)
