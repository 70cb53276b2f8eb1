"""Prometheus metrics: what each server process counts (`/metrics` itself is :mod:`pefthub_server.ops`).

Counted in the process that sees the event (prometheus_client; under `pefthub-server serve`
every gunicorn worker writes its counts to ``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them):

- ``pefthub_http_requests_total{method, route, status}`` and ``pefthub_http_request_duration_seconds``
  (histogram, same labels but status): ``route`` is the URL pattern that matched
  (``api/v1/repos/<str:namespace>/<str:name>``), ``static`` for static files, ``unmatched``
  otherwise, never the raw path: no repository name is ever a label value;
- ``pefthub_push_bytes_total``: bytes of uploads the blob store verified and accepted (new content
  stored; a push of bytes the hub already holds adds nothing);
- ``pefthub_pull_bytes_total``: bytes of blob content the hub sent itself (the local backend's blob
  and ``/hf`` download answers, ranges counted as sent). On S3 clients download from the bucket
  with presigned URLs and those bytes never pass the hub: read them from the bucket's metrics;
- ``pefthub_worker_heartbeats_total{worker}`` and ``pefthub_worker_last_heartbeat_timestamp_seconds{worker}``:
  ``worker`` is the name a worker claims jobs under (its Celery hostname), chosen by the operator.

Read from the database at each scrape: ``pefthub_jobs{queue, status}``, the number of jobs in each
queue and status (queued, running, cancel_requested, succeeded, failed, cancelled).

Who may read it: anyone who reaches the port, as with most exporters, unless ``PEFTHUB_METRICS_TOKEN``
is set; then only ``Authorization: Bearer <that token>``. No label carries a repository, user or
team name.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

REQUESTS = Counter("pefthub_http_requests", "HTTP requests answered, by route pattern and status",
                   ["method", "route", "status"])
LATENCY = Histogram("pefthub_http_request_duration_seconds", "Time from request to response, by route pattern",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PUSH_BYTES = Counter("pefthub_push_bytes", "Bytes of uploads the blob store verified and accepted")
PULL_BYTES = Counter("pefthub_pull_bytes", "Bytes of blob content the hub sent itself")
HEARTBEATS = Counter("pefthub_worker_heartbeats", "Job heartbeats received, by worker", ["worker"])
LAST_HEARTBEAT = Gauge("pefthub_worker_last_heartbeat_timestamp_seconds", "When each worker last sent a heartbeat",
                       ["worker"], multiprocess_mode="max")


def request_observed(*, method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def heartbeat_received(worker: str, when: float) -> None:
    name = worker or "unnamed"
    HEARTBEATS.labels(name).inc()
    LAST_HEARTBEAT.labels(name).set(when)


def exposition(*collectors) -> bytes:
    """The Prometheus text of this process's counts (under gunicorn: the sum over every worker's) and ``collectors``."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.MultiProcessCollector(registry)
    else:
        for metric in (REQUESTS, LATENCY, PUSH_BYTES, PULL_BYTES, HEARTBEATS, LAST_HEARTBEAT):
            registry.register(metric)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
