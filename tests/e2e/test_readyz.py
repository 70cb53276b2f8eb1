"""`/readyz` and `/metrics` of the production server, on a PostgreSQL and a Redis of the test's own.

The test stops and restarts them (``tests.fixtures.services``): `/readyz` turns 503 naming the
part that went away, and 200 again once it is back, without restarting the server. `/metrics`
moves by exactly the requests, bytes and jobs the test makes, summed over both gunicorn workers.
"""

from __future__ import annotations

import pytest
import requests

from tests.e2e.serve import ServeServer, migrate, serve_env, serving
from tests.fixtures.metrics import sample
from tests.fixtures.services import PostgresCluster, RedisServer, temp_folder, wait_until


@pytest.fixture(scope="module")
def parts():
    folder = temp_folder("pefthub-readyz-")
    redis, postgres = RedisServer(folder), PostgresCluster(folder)
    try:
        yield redis, postgres
    finally:
        redis.close()
        postgres.close()


@pytest.fixture(scope="module")
def server(parts, tmp_path_factory):
    redis, postgres = parts
    data = tmp_path_factory.mktemp("readyz")
    env = serve_env(data, postgres.url, {"CELERY_BROKER_URL": redis.url(), "PEFTHUB_READY_TIMEOUT": "2"})
    migrate(env)
    with serving(env, "--workers", "2", "--threads", "4", log=data / "serve.log") as running:
        yield running


def _ready(server: ServeServer) -> tuple[int, dict]:
    answer = requests.get(f"{server.url}/readyz", timeout=10)
    return answer.status_code, answer.json()


def _ready_again(server: ServeServer) -> dict:
    return wait_until(lambda: (lambda s, b: b if s == 200 else None)(*_ready(server)), timeout=30,
                      what="/readyz to answer 200 again")


def test_ready_names_each_part(server):
    status, body = _ready(server)
    assert status == 200 and body["status"] == "ready" and body["failed"] == []
    assert {name: part["kind"] for name, part in body["checks"].items()} == {
        "database": "postgresql", "broker": "redis", "storage": "local"}


def test_broker_down_is_named_then_ready_after_its_restart(server, parts):
    redis, _ = parts
    redis.stop()
    try:
        status, body = _ready(server)
        assert status == 503 and body["failed"] == ["broker"], body
        assert body["checks"]["database"]["ok"] and body["checks"]["storage"]["ok"]
        assert requests.get(f"{server.url}/healthz").status_code == 200  # alive, only not ready
    finally:
        redis.start()
    assert _ready_again(server)["failed"] == []


def test_database_down_is_named_then_ready_after_its_restart(server, parts):
    _, postgres = parts
    assert requests.get(f"{server.url}/api/v1/").status_code == 200  # the workers hold database connections now
    postgres.stop()
    try:
        status, body = _ready(server)
        assert status == 503 and body["failed"] == ["database"], body
        text = requests.get(f"{server.url}/readyz").text
        assert str(postgres.port) not in text and "postgres://" not in text and "127.0.0.1" not in text
    finally:
        postgres.start()
    assert _ready_again(server)["failed"] == []
    for _ in range(4):  # each worker thread's old connection is found dead and replaced, not reported
        assert requests.get(f"{server.url}/api/v1/repos").status_code == 200


def _metrics(server: ServeServer) -> str:
    return requests.get(f"{server.url}/metrics").text


def test_metrics_move_by_the_requests_and_bytes_made_over_both_workers(server, open_hub, tmp_path):
    token = server.adduser("mona", "--team", "metrics-team", "--role", "admin")
    hub = open_hub(url=server.url, token=token, cache_dir=tmp_path / "cache")
    before = _metrics(server)
    for _ in range(20):  # a new connection each: gunicorn's two workers take them as they come
        assert requests.get(f"{server.url}/api/v1/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert requests.get(f"{server.url}/api/v1/repos/metrics/nope").status_code == 404
    after = _metrics(server)
    counted = sample(after, "pefthub_http_requests_total", method="GET", route="api/v1/", status="200") - sample(
        before, "pefthub_http_requests_total", method="GET", route="api/v1/", status="200")
    assert counted == 20
    route = "api/v1/repos/<ns>/<name>"
    assert sample(after, "pefthub_http_requests_total", method="GET", route=route, status="404") - sample(
        before, "pefthub_http_requests_total", method="GET", route=route, status="404") == 1

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(f'{{"text": "row {i}"}}\n' for i in range(500)))
    size = (folder / "train.jsonl").stat().st_size
    hub.push(folder, "metrics-team/private-set", kind="dataset")
    pushed = _metrics(server)
    assert sample(pushed, "pefthub_push_bytes_total") - sample(after, "pefthub_push_bytes_total") == size
    hub.push(folder, "metrics-team/private-set", kind="dataset")  # the same bytes again: nothing uploaded
    again = _metrics(server)
    assert sample(again, "pefthub_push_bytes_total") == sample(pushed, "pefthub_push_bytes_total")
    hub.pull("metrics-team/private-set")
    pulled = _metrics(server)
    assert sample(pulled, "pefthub_pull_bytes_total") - sample(again, "pefthub_pull_bytes_total") == size
    assert "private-set" not in pulled and "nope" not in pulled
