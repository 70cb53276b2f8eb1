"""Eval jobs on the hub: submit (pins, rights, bad input), what their token may do, and metrics attached on complete.

Every token comes from the real endpoints (claim for job tokens); the metrics land on the adapter version the
job pinned at submit, whatever version the worker might name, and only with the job's own token.
"""

from __future__ import annotations

import pytest

from pefthub_server.jobs.models import Job
from pefthub_server.registry.models import Evaluation
from tests.backend.jobs.conftest import claim, submit, train_spec
from tests.conftest import _person, api_push

METRICS = {"rows": 8, "tokens": 40, "loss": 2.5, "perplexity": 12.182493960703473}


@pytest.fixture
def acme_bot(alice, api, acme_base, acme_data, tiny_adapter):
    """`acme/bot@1`, an adapter on `acme/llama-tiny@1`, pushed by alice; `acme/data@1` beside it."""
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
                format="json")
    response = api_push(client, "acme/bot", tiny_adapter[0])
    assert response.status_code == 201, response.content
    return response.json()


def eval_spec(**overrides):
    return {"type": "eval", "adapter": "acme/bot@1", "dataset": "acme/data", **overrides}


def _error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    if field is not None:
        assert error["detail"]["field"] == field, error
    return error


def test_an_eval_job_pins_the_adapter_its_base_and_the_dataset_and_runs_on_cpu(alice, api, acme_bot):
    job = submit(api(alice.token), eval_spec()).json()
    assert job["type"] == "eval" and job["queue"] == "cpu" and job["output"] == "acme/bot" and job["status"] == "queued"
    assert job["inputs"]["adapter"] == {"repo": "acme/bot", "number": 1, "digest": acme_bot["digest"]}
    assert job["inputs"]["base_model"]["repo"] == "acme/llama-tiny" and job["inputs"]["base_model"]["number"] == 1
    assert job["inputs"]["dataset"]["repo"] == "acme/data" and job["inputs"]["dataset"]["number"] == 1
    assert job["spec"] == {"type": "eval", "adapter": "acme/bot@1", "dataset": "acme/data", "dataset_file": None,
                           "max_rows": 1000, "max_new_tokens": 64, "max_seq_length": 512, "batch_size": 8}


def test_rights_read_on_adapter_and_dataset_write_on_the_adapter_namespace(alice, carol, api, acme_bot):
    outsider = api(carol.token)
    hidden = _error(submit(outsider, eval_spec()), 400, "adapter")
    missing = _error(submit(outsider, eval_spec(adapter="acme/nothing@1")), 400, "adapter")
    # an unreadable repository reads exactly like a missing one
    assert hidden["message"].replace("bot", "X") == missing["message"].replace("nothing", "X")
    dave = _person("dave", team="acme", role="read")
    refused = _error(submit(api(dave.token), eval_spec()), 403)
    assert "`write` role in `acme`" in refused["message"] and "evaluate `acme/bot`" in refused["message"]
    assert "`read`" in refused["message"]
    # carol's own dataset is hers: alice cannot score on it
    outsider.post("/api/v1/repos", {"namespace": "carol", "name": "data", "kind": "dataset"}, format="json")
    _error(submit(api(alice.token), eval_spec(dataset="carol/data")), 400, "dataset")
    assert not Job.objects.filter(type="eval").exists()


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"max_new_tokens": 0}, "max_new_tokens", "an integer > 0"),
    ({"max_rows": 10**9}, "max_rows", "<= 100000"),
    ({"max_tokens": 8}, "max_tokens", "did you mean `max_new_tokens`"),
    ({"dataset_file": "../etc/x.jsonl"}, "dataset_file", "relative path"),
    ({"adapter": "acme/data"}, "adapter", "is a dataset repository, not an adapter"),
    ({"dataset": "acme/bot"}, "dataset", "is an adapter repository, not a dataset"),
    ({"adapter": None}, "adapter", "adapter is required"),
    ({"queue": "tpu"}, "queue", "queue 'tpu' is unknown"),
])
def test_bad_eval_specs_are_400s_naming_the_field(alice, api, acme_bot, overrides, field, words):
    error = _error(submit(api(alice.token), eval_spec(**overrides)), 400, field)
    assert words in error["message"], error


@pytest.fixture
def claimed_eval(alice, api, acme_bot, worker):
    job = submit(api(alice.token), eval_spec()).json()
    return job, claim(api, worker, job["id"])


def test_an_eval_job_token_reads_its_three_inputs_and_pushes_nothing(claimed_eval, api, tiny_adapter):
    job, c = claimed_eval
    token = api(c["token"])
    for pin in (job["inputs"]["adapter"], job["inputs"]["base_model"], job["inputs"]["dataset"]):
        assert token.get(f"/api/v1/repos/{pin['repo']}/versions/{pin['digest']}").status_code == 200, pin
    pushed = api_push(token, "acme/bot", tiny_adapter[0], job=job["id"])
    assert pushed.status_code == 403 and pushed.json()["error"]["code"] == "job_token_refused"
    commit = token.post("/api/v1/repos/acme/bot/versions", {"files": [], "job": job["id"]}, format="json")
    assert commit.status_code == 403


def test_complete_attaches_the_metrics_to_the_pinned_version(claimed_eval, api, alice):
    job, c = claimed_eval
    token = api(c["token"])
    done = token.post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "metrics": METRICS}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["status"] == "succeeded" and done.json()["metrics"] == METRICS
    evaluation = Evaluation.objects.get()
    assert (evaluation.version.repository.full_name, evaluation.version.number) == ("acme/bot", 1)
    assert evaluation.job_id.hex == job["id"] and evaluation.metrics == METRICS
    detail = api(alice.token).get("/api/v1/repos/acme/bot/versions/1").json()
    assert detail["evaluations"] == [{
        "dataset": job["inputs"]["dataset"], "dataset_file": None, "metrics": METRICS, "job": job["id"],
        "created_at": detail["evaluations"][0]["created_at"],
    }]
    assert token.get(f"/api/v1/jobs/{job['id']}").status_code == 401  # the token died with the job
    assert Job.objects.get(pk=job["id"]).token.revoked_at is not None

    from django.test import Client

    web = Client()
    web.force_login(alice.user)
    page = web.get(f"/jobs/{job['id']}")
    assert page.status_code == 200 and "acme/bot" in page.content.decode()
    alice.user.is_staff = alice.user.is_superuser = True  # the operator's admin page renders an eval job too
    alice.user.save()
    web.force_login(alice.user)
    assert web.get(f"/admin/jobs/job/{job['id']}/change/").status_code == 200
    version_page = web.get(f"/admin/registry/version/{evaluation.version.pk}/change/")
    assert version_page.status_code == 200 and "acme/data" in version_page.content.decode()


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"version": 1, "metrics": METRICS}, "version", "makes no version"),
    ({"version": 1}, "version", "makes no version"),
    ({}, "metrics", "non-empty JSON object"),
    ({"metrics": {"loss": "low"}}, "metrics.loss", "finite number"),
    ({"metrics": {"loss": True}}, "metrics.loss", "finite number"),
    ({"metrics": {"Bad Name": 1.0}}, "metrics", "not a metric name"),
    ({"metrics": {f"m{i}": 1.0 for i in range(65)}}, "metrics", "at most 64"),
])
def test_bad_completions_are_400s_and_attach_nothing(claimed_eval, api, body, field, words):
    job, c = claimed_eval
    response = api(c["token"]).post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, **body}, format="json")
    assert words in _error(response, 400, field)["message"]
    assert not Evaluation.objects.exists() and Job.objects.get(pk=job["id"]).status == "running"


def test_only_the_eval_jobs_own_token_completes_it(claimed_eval, api, alice, worker, acme_bot):
    job, _ = claimed_eval
    other = submit(api(alice.token), train_spec(output="acme/bot2")).json()
    other_token = api(claim(api, worker, other["id"])["token"])
    refused = other_token.post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "metrics": METRICS}, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "job_token_refused"
    # its owner cannot either: only a job token completes a job
    assert api(alice.token).post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "metrics": METRICS},
                                 format="json").status_code == 403
    # and a train job completes with its version, never with metrics
    wrong = other_token.post(f"/api/v1/jobs/{other['id']}/complete", {"attempt": 1, "metrics": METRICS}, format="json")
    assert "not metrics" in _error(wrong, 400, "metrics")["message"]
    assert not Evaluation.objects.exists()


def _evaluated(api, person, worker, metrics, **spec) -> dict:
    job = submit(api(person.token), eval_spec(**spec)).json()
    token = api(claim(api, worker, job["id"])["token"])
    assert token.post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "metrics": metrics},
                      format="json").status_code == 200
    return job


def test_an_evaluation_on_a_dataset_the_reader_cannot_read_does_not_name_it(alice, bob, api, acme_bot, worker, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"prompt": "a", "completion": " b"}\n')
    mine = api(bob.token)
    mine.post("/api/v1/repos", {"namespace": "bob", "name": "mine", "kind": "dataset"}, format="json")
    assert api_push(mine, "bob/mine", folder).status_code == 201
    _evaluated(api, bob, worker, METRICS, dataset="bob/mine")
    _evaluated(api, alice, worker, {"loss": 2.0}, adapter="acme/bot@1")
    seen_by_bob = mine.get("/api/v1/repos/acme/bot/versions/1").json()["evaluations"]
    assert [e["dataset"]["repo"] for e in seen_by_bob] == ["acme/data", "bob/mine"]  # newest first
    seen_by_alice = api(alice.token).get("/api/v1/repos/acme/bot/versions/1")
    assert [e["dataset"] for e in seen_by_alice.json()["evaluations"]][1] is None
    assert seen_by_alice.json()["evaluations"][1]["metrics"] == METRICS and b"bob/mine" not in seen_by_alice.content

    from django.test import Client

    page = {}
    for person in (alice, bob):
        client = Client()
        client.force_login(person.user)
        page[person.user.username] = client.get("/acme/bot/versions/1").content.decode()
    assert "Evaluation on acme/data@1" in page["alice"] and "Evaluation on a repository you cannot see" in page["alice"]
    assert "bob/mine" not in page["alice"] and "Evaluation on bob/mine@1" in page["bob"]
    assert "perplexity" in page["bob"] and "12.1825" in page["bob"]


def test_the_web_compare_page_matches_evaluations_by_dataset_version(alice, api, acme_bot, worker, tiny_adapter,
                                                                     tmp_path):
    import shutil

    from django.test import Client

    second = shutil.copytree(tiny_adapter[0], tmp_path / "second")
    (second / "README.md").write_text("another version\n")
    assert api_push(api(alice.token), "acme/bot", second).status_code == 201
    _evaluated(api, alice, worker, {"loss": 2.5}, adapter="acme/bot@1")
    _evaluated(api, alice, worker, {"loss": 2.25}, adapter="acme/bot@2")
    client = Client()
    client.force_login(alice.user)
    page = client.get("/acme/bot/compare?a=1&b=2").content.decode()
    section = page[page.index("Evaluation on acme/data@1"):]
    assert section.index("2.5") < section.index("2.25") and page.count("Evaluation on acme/data@1") == 1
