"""/healthz, /readyz and /metrics through Django (the servers' own behaviour is in tests/e2e/test_serve.py, test_readyz.py)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest
from django.test import Client

from tests.conftest import api_push, file_specs
from tests.fixtures.metrics import sample


@pytest.mark.django_db
def test_healthz_and_readyz_answer_whatever_the_host(settings):
    client = Client(HTTP_HOST="10.0.0.7:8000")  # a probe reaching a pod by its IP
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    body = ready.json()
    assert body["status"] == "ready" and body["failed"] == []
    assert {name: part["kind"] for name, part in body["checks"].items()} == {
        "database": "postgresql" if "postgres" in settings.DATABASES["default"]["ENGINE"] else "sqlite",
        "broker": "redis" if settings.CELERY_BROKER_URL else "embedded", "storage": "local"}


@pytest.mark.django_db
def test_readyz_names_a_failing_part_without_its_message(settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the broker's folder should be")
    settings.CELERY_BROKER_URL = ""  # the embedded broker: a folder, here one that cannot exist
    settings.PEFTHUB_BROKER_DIR = blocker / "broker"
    ready = Client().get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable" and body["failed"] == ["broker"]
    assert body["checks"]["broker"]["error"].startswith("unreachable (") and str(tmp_path) not in ready.content.decode()
    assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]


@pytest.mark.django_db
def test_operations_endpoints_answer_get_only():
    for path in ("/healthz", "/readyz", "/metrics"):
        answer = Client().post(path)
        assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed", path
        assert Client().head(path).status_code == 200


@pytest.mark.django_db
def test_metrics_needs_the_token_when_one_is_set(settings):
    settings.PEFTHUB_METRICS_TOKEN = "scrape-secret-0123456789"
    refused = Client().get("/metrics")
    assert refused.status_code == 401 and "PEFTHUB_METRICS_TOKEN" in refused.json()["error"]["message"]
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    granted = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-0123456789")
    assert granted.status_code == 200 and granted["Content-Type"].startswith("text/plain")


def test_request_counts_move_by_route_pattern_never_by_path(alice, api, tiny_adapter):
    client = api(alice.token)
    before = Client().get("/metrics").content.decode()
    client.post("/api/v1/repos", {"namespace": "acme", "name": "secret-plans", "kind": "dataset"}, format="json")
    for _ in range(3):
        assert client.get("/api/v1/repos/acme/secret-plans").status_code == 200
    assert client.get("/api/v1/repos/acme/no-such-thing").status_code == 404
    after = Client().get("/metrics").content.decode()
    route = "api/v1/repos/<ns>/<name>"
    assert sample(after, "pefthub_http_requests_total", method="GET", route=route, status="200") - sample(
        before, "pefthub_http_requests_total", method="GET", route=route, status="200") == 3
    assert sample(after, "pefthub_http_requests_total", method="GET", route=route, status="404") - sample(
        before, "pefthub_http_requests_total", method="GET", route=route, status="404") == 1
    assert sample(after, "pefthub_http_request_duration_seconds_count", method="GET", route=route) - sample(
        before, "pefthub_http_request_duration_seconds_count", method="GET", route=route) == 4
    assert "secret-plans" not in after and "no-such-thing" not in after


def test_push_and_pull_bytes_count_what_the_store_took_and_the_hub_sent(alice, api, tiny_adapter, acme_base):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter",
                                  "base_model": "acme/llama-tiny"}, format="json")
    before = Client().get("/metrics").content.decode()
    assert api_push(client, "acme/bot", tiny_adapter[0]).status_code == 201
    middle = Client().get("/metrics").content.decode()
    pushed = sum(spec["size"] for spec in file_specs(tiny_adapter[0]))  # none of them is in the base
    assert sample(middle, "pefthub_push_bytes_total") - sample(before, "pefthub_push_bytes_total") == pushed
    manifest = client.get("/api/v1/repos/acme/bot/versions/1").json()
    entry = next(f for f in manifest["files"] if f["path"] == "adapter_config.json")
    url = urlsplit(entry["url"])
    body = Client().get(f"{url.path}?{url.query}").getvalue()
    after = Client().get("/metrics").content.decode()
    assert sample(after, "pefthub_pull_bytes_total") - sample(middle, "pefthub_pull_bytes_total") == len(body) > 0


def test_every_log_line_of_a_request_carries_its_id(api, alice, caplog):
    with caplog.at_level(logging.INFO, logger="pefthub.access"):
        answer = api(alice.token).get("/api/v1/whoami", HTTP_X_REQUEST_ID="trace-me-42")
    assert answer["X-Request-ID"] == "trace-me-42"
    access = [r for r in caplog.records if r.name == "pefthub.access"]
    assert len(access) == 1 and access[0].request_id == "trace-me-42"
    assert (access[0].route, access[0].status, access[0].bytes) == ("api/v1/whoami", 200, len(answer.content))


def test_jobs_are_counted_by_queue_and_status_when_scraped(alice):
    from pefthub_server.jobs.models import Job
    from pefthub_server.registry.models import Namespace

    acme = Namespace.objects.get(name="acme")
    for queue, status in (("gpu", "queued"), ("gpu", "queued"), ("gpu", "running"), ("cpu", "failed")):
        Job.objects.create(type="train", queue=queue, status=status, owner=alice.user, namespace=acme,
                           output_name="out", spec={})
    text = Client().get("/metrics").content.decode()
    assert sample(text, "pefthub_jobs", queue="gpu", status="queued") == 2
    assert sample(text, "pefthub_jobs", queue="gpu", status="running") == 1
    assert sample(text, "pefthub_jobs", queue="cpu", status="failed") == 1
    assert 'pefthub_jobs{queue="cpu",status="succeeded"} 0.0' in text  # every status of the known queues, 0 too
