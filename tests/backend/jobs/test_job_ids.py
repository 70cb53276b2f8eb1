"""A job named by a prefix of its id, as the CLI and quickstart print it (`job ed9ec9282619`).

User routes (show, events, cancel) take a unique prefix of at least JOB_ID_MIN_PREFIX hex
digits, matched among the jobs the caller may see only; worker routes take the full id.
"""

from __future__ import annotations

import uuid

import pytest

from pefthub.protocol.jobs import JOB_ID_MIN_PREFIX
from pefthub_server.jobs.models import Job
from pefthub_server.registry.models import Namespace
from tests.conftest import worker_token

A1 = "ed9ec9282619" + "0" * 20
A2 = "ed9ec9282619" + "1" * 20
B = "ed9ec928ffff" + "2" * 20
CAROL = "ed9ec928eeee" + "3" * 20


def _job(person, namespace: str, job_id: str, output: str = "bot") -> Job:
    return Job.objects.create(id=uuid.UUID(job_id), type="train", owner=person.user,
                              namespace=Namespace.objects.get(name=namespace), output_name=output, spec={})


@pytest.fixture
def jobs(alice, bob, carol):
    _job(alice, "acme", A1, "bot")
    _job(bob, "acme", A2, "sql")
    _job(alice, "acme", B, "other")
    _job(carol, "carol", CAROL, "secret")


def test_a_unique_prefix_names_the_job_on_every_user_route(jobs, alice, api):
    client = api(alice.token)
    assert JOB_ID_MIN_PREFIX == 8
    for prefix in ("ed9ec928ff", "ED9EC928FFFF", B[:31]):
        response = client.get(f"/api/v1/jobs/{prefix}")
        assert response.status_code == 200, response.content
        assert response.json()["id"] == B
    events = client.get("/api/v1/jobs/ed9ec928ff/events")
    assert events.status_code == 200 and events.json()["status"] == "queued"
    cancelled = client.post("/api/v1/jobs/ed9ec928ff/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["id"] == B and cancelled.json()["status"] == "cancelled"
    dashed = str(uuid.UUID(B))
    assert client.get(f"/api/v1/jobs/{dashed}").json()["id"] == B


def test_an_ambiguous_prefix_is_a_400_listing_the_matches(jobs, alice, api):
    response = api(alice.token).get("/api/v1/jobs/ed9ec9282619")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "ambiguous_job_id"
    assert sorted(error["detail"]["matches"]) == [A1, A2]
    assert error["message"].startswith("Job id `ed9ec9282619` is ambiguous: it matches ")
    assert A1 in error["message"] and "train → acme/sql, queued" in error["message"]
    assert error["message"].endswith("Give more of its digits, or the full id.")
    # one more digit settles it
    assert api(alice.token).get("/api/v1/jobs/ed9ec92826190").json()["id"] == A1


def test_a_short_prefix_is_a_400_saying_how_long(jobs, alice, api):
    response = api(alice.token).get("/api/v1/jobs/ed9ec92")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_job_id" and error["detail"] == {"min_length": 8}
    assert error["message"] == ("Job id `ed9ec92` is too short: give at least 8 of its hex digits, or all 32 "
                                "(`pefthub jobs ls` lists them).")


def test_a_prefix_matches_only_jobs_the_caller_may_see(jobs, alice, carol, api):
    # carol's own job is the only one she sees under the prefix alice's three share: no 400, no hint of theirs
    mine = api(carol.token).get("/api/v1/jobs/ed9ec928")
    assert mine.status_code == 200 and mine.json()["id"] == CAROL
    for prefix in ("ed9ec9282619", "ed9ec928ff"):
        response = api(carol.token).get(f"/api/v1/jobs/{prefix}")
        assert response.status_code == 404, response.content
        assert response.json()["error"]["message"] == f"Job {prefix} not found (or you have no access to it)."
    assert api(carol.token).post("/api/v1/jobs/ed9ec928ff/cancel").status_code == 404
    assert api(carol.token).get("/api/v1/jobs/ed9ec928ff/events").status_code == 404
    # alice does not see carol's job either: her prefix is ambiguous among her own three only
    response = api(alice.token).get("/api/v1/jobs/ed9ec928")
    assert response.status_code == 400 and CAROL not in response.content.decode()
    assert api(alice.token).get("/api/v1/jobs/ed9ec928ee").status_code == 404
    assert api().get("/api/v1/jobs/ed9ec928ff").status_code in (401, 404)


def test_worker_routes_take_the_full_id_only(jobs, api):
    worker = api(worker_token())
    assert worker.post("/api/v1/jobs/ed9ec928ff/claim", {"worker": "w"}, format="json").status_code == 404
    claimed = worker.post(f"/api/v1/jobs/{B}/claim", {"worker": "w"}, format="json")
    assert claimed.status_code == 200, claimed.content
    job_token = api(claimed.json()["token"])
    for action in ("heartbeat", "complete", "fail"):
        assert job_token.post(f"/api/v1/jobs/ed9ec928ff/{action}", {"attempt": 1}, format="json").status_code == 404
    # the events route is shared with users: a job token names its own job by its full id only
    events = {"attempt": 1, "events": [{"type": "log", "data": {"message": "hi"}}]}
    assert job_token.post("/api/v1/jobs/ed9ec928ff/events", events, format="json").status_code == 403
    assert job_token.post(f"/api/v1/jobs/{B}/events", events, format="json").status_code == 200
    assert job_token.get("/api/v1/jobs/ed9ec928ff").status_code == 403
    assert job_token.get(f"/api/v1/jobs/{B}").status_code == 200
