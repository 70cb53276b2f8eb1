"""Concurrent alias moves against a real server: every move succeeds or fails cleanly, and the history chains.

The server is waitress (what `pefthub-server up` runs) with a thread per mover; Django's
test server resets connections when 30 arrive at once.

The race needs a database that runs transactions side by side: run this file with
``DATABASE_URL=postgres://…`` too (SQLite serialises writers, so there it checks the
same rules without the race).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import api_push

MOVERS = 30


@pytest.fixture
def hub_url(transactional_db, monkeypatch):
    """waitress serving the hub in this process (so it uses the test database), a thread per mover."""
    from django.core.wsgi import get_wsgi_application
    from django.db import connections
    from waitress.server import create_server

    # Each thread closes its connection after each request: waitress's threads outlive the server, and 30 kept
    # connections each would keep the test database from being dropped (and crowd the shared PostgreSQL).
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    server = create_server(get_wsgi_application(), host="127.0.0.1", port=0, threads=MOVERS)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()
    thread.join(10)


@pytest.fixture
def dataset(alice, api, transactional_db, tmp_path):
    """`acme/data` with MOVERS versions, so each mover can point the alias somewhere new."""
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json").status_code == 201
    folder = tmp_path / "data"
    folder.mkdir()
    for n in range(1, MOVERS + 1):
        (folder / "train.jsonl").write_text(f'{{"text": "row {n}"}}\n')
        assert api_push(client, "acme/data", folder).status_code == 201
    return "/api/v1/repos/acme/data/aliases/prod"


def _all_at_once(hub_url: str, token: str, calls: list[tuple[str, str, dict | None]]) -> list[requests.Response]:
    """Send every call from its own thread, released together."""
    start = threading.Barrier(len(calls))

    def send(call):
        method, path, body = call
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            start.wait()
            return session.request(method, hub_url + path, json=body, timeout=60)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(send, calls))


def _history(hub_url: str, token: str, path: str) -> tuple[int | None, list[dict]]:
    """(the alias's version or None when it is gone, its moves oldest first)."""
    from pefthub_server.registry.models import Alias, AliasMove

    current = Alias.objects.filter(repository__name="data", name="prod").select_related("version").first()
    moves = AliasMove.objects.filter(repository__name="data", alias="prod").order_by("moved_at", "id")
    if current is not None:  # the API shows the same, newest first
        shown = requests.get(hub_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        assert shown["version"] == current.version.number
        assert [(m["from"], m["to"]) for m in shown["history"]] == [(m.from_number, m.to_number) for m in reversed(moves)]
    return (current.version.number if current else None), [{"from": m.from_number, "to": m.to_number} for m in moves]


def _assert_chained(final: int | None, moves: list[dict]) -> None:
    previous = None
    for move in moves:
        assert move["from"] == previous, moves
        assert move["to"] != move["from"], moves
        previous = move["to"]
    assert final == previous


def test_concurrent_moves_of_one_alias_all_succeed_and_chain(hub_url, alice, dataset):
    responses = _all_at_once(hub_url, alice.token, [("PUT", dataset, {"version": n}) for n in range(1, MOVERS + 1)])

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * MOVERS, f"{sum(s >= 500 for s in statuses)} of {MOVERS} were 5xx: {statuses}"
    # Each answer is the state its own move produced, not a later re-read.
    assert [r.json()["version"] for r in responses] == list(range(1, MOVERS + 1))
    final, moves = _history(hub_url, alice.token, dataset)
    assert len(moves) == MOVERS and {m["to"] for m in moves} == set(range(1, MOVERS + 1))
    _assert_chained(final, moves)


def test_concurrent_moves_and_deletes_never_fail_with_5xx(hub_url, alice, dataset):
    calls = [("PUT", dataset, {"version": n}) if n % 3 else ("DELETE", dataset, None) for n in range(1, MOVERS + 1)]

    responses = _all_at_once(hub_url, alice.token, calls)

    for (method, _, body), response in zip(calls, responses):
        if method == "PUT":
            assert response.status_code == 200, response.text
            assert response.json()["version"] == body["version"]
        else:  # the alias was there to delete, or it was not (yet or any more)
            assert response.status_code in (204, 404), response.text
            if response.status_code == 404:
                assert response.json()["error"]["code"] == "not_found"
    final, moves = _history(hub_url, alice.token, dataset)
    deleted = sum(r.status_code == 204 for r in responses)
    assert len(moves) == sum(m == "PUT" for m, _, _ in calls) + deleted
    _assert_chained(final, moves)

