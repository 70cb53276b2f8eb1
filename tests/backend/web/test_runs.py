"""The run pages through Django's test client: versions, compare, lineage, the jobs list and a job with its loss chart.

The world is made through the API as users and a worker make it: alice's private base and dataset, her
train job claimed by a worker that reports metric events, pushes the adapter and completes.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pefthub_server.jobs.models import Job, JobEvent
from pefthub_server.registry.models import Namespace, Repository, Version
from tests.conftest import api_push, worker_token

#: the metric events the worker reports: training loss at steps 1-6, eval loss before and after
METRICS = [{"step": 0, "eval_loss": 4.5}] + [
    {"step": s, "total_steps": 6, "epoch": s / 6, "loss": 4.0 - s * 0.4, "learning_rate": 1e-4} for s in range(1, 7)
] + [{"step": 6, "eval_loss": 2.0}]


def _signed_in(person) -> Client:
    client = Client()
    client.force_login(person.user)
    return client


def _dataset(client, tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(8)) + "\n")
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    assert api_push(client, "acme/data", folder).status_code == 201


def _submit(owner, output: str = "acme/bot") -> dict:
    spec = {"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/data", "output": output,
            "method": "lora", "hyperparameters": {"r": 4, "max_steps": 6}, "aliases": ["staging"]}
    response = owner.post("/api/v1/jobs", spec, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def world(alice, bob, carol, api, acme_base, tiny_adapter, tmp_path):
    """alice's train job into private `acme/bot`, run to the end by a worker (version 1, alias staging); a version 2
    pushed by alice with other metadata; and a public `acme/open-bot` on the private base."""
    owner = api(alice.token)
    _dataset(owner, tmp_path)
    job = _submit(owner)
    owner.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
               format="json")
    workers = api(worker_token("gpu-node"))
    claim = workers.post(f"/api/v1/jobs/{job['id']}/claim", {"worker": "gpu-1"}, format="json").json()
    w = api(claim["token"])
    events = [{"type": "log", "data": {"message": "training <lora>"}}] + [{"type": "metric", "data": m} for m in METRICS]
    assert w.post(f"/api/v1/jobs/{job['id']}/events", {"attempt": 1, "events": events}, format="json").status_code == 200
    lineage = {"job": job["id"], "base_model": job["inputs"]["base_model"], "dataset": job["inputs"]["dataset"],
               "method": "lora", "hyperparameters": {"r": 4, "max_steps": 6, "learning_rate": 0.0002}}
    pushed = api_push(w, "acme/bot", tiny_adapter[0], job=job["id"], aliases=["staging"], base_model="acme/llama-tiny@1",
                      metadata={"lineage": lineage, "metrics": {"final_loss": 1.6, "eval_loss": 2.0}})
    assert pushed.status_code == 201, pushed.content
    assert w.post(f"/api/v1/jobs/{job['id']}/complete", {"attempt": 1, "version": 1}, format="json").status_code == 200
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_adapter[0], retrained)
    (retrained / "README.md").write_text("# bot, retrained\n")
    second = api_push(owner, "acme/bot", retrained, message="retrained", base_model="acme/llama-tiny@1",
                      metadata={"lineage": {**lineage, "hyperparameters": {"r": 4, "max_steps": 6, "learning_rate": 0.001}},
                                "metrics": {"final_loss": 1.2, "eval_loss": 2.0}})
    assert second.status_code == 201, second.content
    owner.post("/api/v1/repos", {"namespace": "acme", "name": "open-bot", "kind": "adapter",
                                 "base_model": "acme/llama-tiny", "visibility": "public"}, format="json")
    assert api_push(owner, "acme/open-bot", tiny_adapter[0]).status_code == 201
    return {"job": job, "api": api, "workers": workers}


def _page(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.content.decode()


def test_version_page_shows_the_version_its_config_training_files_aliases_job_and_lineage(world, alice):
    job_id = world["job"]["id"]
    page = _page(_signed_in(alice), "/acme/bot/versions/1")
    version = Version.objects.get(repository__name="bot", number=1)
    assert f"sha256:{version.digest}" in page and ">alice</a>" in page
    assert "<code>adapter_model.safetensors</code>" in page and "<code>adapter_config.json</code>" in page
    assert '<span class="chip" title="moved here' in page and ">staging</span>" in page
    assert f'href="/jobs/{job_id}"' in page
    for key, value in (("peft_type", "LORA"), ("learning_rate", "0.0002"), ("final_loss", "1.6"), ("dataset", "acme/data@1")):
        assert re.search(rf"<code>{key}</code></th><td>{re.escape(value)}</td>", page), key
    # the lineage graph: the base and the data it was trained on, as links; no children yet
    svg = page[page.index('<svg class="lineage"'):page.index("</svg>", page.index('<svg class="lineage"'))]
    assert '<a class="parent" href="/acme/llama-tiny/versions/1">' in svg and '<a class="parent" href="/acme/data/versions/1">' in svg
    assert 'class="child"' not in svg
    # the base's page draws its adapters as children (alice reads all three versions)
    base = _page(_signed_in(alice), "/acme/llama-tiny/versions/1")
    assert base.count('<a class="child"') == 3 and '<a class="child" href="/acme/bot/versions/2">' in base
    assert "pushed, not made by a job" in base


def test_outsiders_get_404_and_unreadable_parents_are_never_named(world, carol, bob):
    job_id = world["job"]["id"]
    outsider = _signed_in(carol)
    for url in ("/acme/bot/versions/1", "/acme/bot/compare?a=1&b=2", f"/jobs/{job_id}", f"/jobs/{job_id[:8]}",
                f"/jobs/{job_id}/live", "/acme/llama-tiny/versions/1", "/acme/nothing/versions/1", "/acme/bot/versions/99"):
        assert outsider.get(url).status_code == 404, url
        assert Client().get(url).status_code == 404, url
    assert job_id[:12] not in _page(outsider, "/jobs")
    # the public adapter's base is alice's private model: carol sees that there is one, never its name
    page = _page(outsider, "/acme/open-bot/versions/1")
    assert "a repository you cannot see" in page and "llama-tiny" not in page
    # bob, an acme member, sees the team's job and pages
    assert f"<code>{job_id}</code>" in _page(_signed_in(bob), f"/jobs/{job_id[:10]}")
    assert "a repository you cannot see" not in _page(_signed_in(bob), "/acme/open-bot/versions/1")


def test_a_continued_version_draws_the_version_it_continued_as_a_parent_named_only_to_readers(world, alice, carol,
                                                                                              tiny_adapter, tmp_path):
    continued = tmp_path / "continued"
    shutil.copytree(tiny_adapter[0], continued)
    (continued / "README.md").write_text("# open bot, continued from the private one\n")
    parent = Version.objects.get(repository__name="bot", number=1)
    lineage = {"parent": {"repo": "acme/bot", "number": 1, "digest": f"sha256:{parent.digest}"}, "method": "lora"}
    pushed = api_push(world["api"](alice.token), "acme/open-bot", continued, metadata={"lineage": lineage})
    assert pushed.json()["number"] == 2, pushed.content
    page = _page(_signed_in(alice), "/acme/open-bot/versions/2")
    assert '<a class="parent" href="/acme/bot/versions/1">' in page and "acme/bot@1</a> (continued from)" in page
    # carol reads the public adapter, not the private one it continued
    page = _page(_signed_in(carol), "/acme/open-bot/versions/2")
    assert "a repository you cannot see (continued from)" in page and "acme/bot@" not in page


def test_compare_puts_two_versions_side_by_side_and_marks_differences(world, alice):
    client = _signed_in(alice)
    page = _page(client, "/acme/bot/compare?a=1&b=2")
    rows = {key: bool(differs) for differs, key in re.findall(r'<tr( class="differs")?><th scope="row"><code>(\w+)</code>', page)}
    assert rows["learning_rate"] and rows["final_loss"]  # differ
    assert not rows["eval_loss"] and not rows["r"] and not rows["peft_type"]  # equal
    assert "<td>0.0002</td><td>0.001</td>" in page
    for query, words in (("?a=1", "`b` must be a version number"), ("?a=x&b=2", "`a` must be a version number"),
                         ("?a=1&b=1234567890", "`b` must be a version number")):
        assert words in _page(client, f"/acme/bot/compare{query}", 400)
    assert client.get("/acme/bot/compare?a=1&b=9").status_code == 404


def test_jobs_list_filters_pages_and_refuses_unknown_values(world, alice):
    client = _signed_in(alice)
    job_id = world["job"]["id"]
    assert f'href="/jobs/{job_id}"' in _page(client, "/jobs")
    assert f'href="/jobs/{job_id}"' in _page(client, "/jobs?status=succeeded&type=train")
    assert f'href="/jobs/{job_id}"' not in _page(client, "/jobs?status=queued")
    assert "`status` must be one of queued" in _page(client, "/jobs?status=bogus", 400)
    assert "Sign in" in _page(Client(), "/jobs")
    acme = Namespace.objects.get(name="acme")
    Job.objects.bulk_create([Job(type="train", owner=alice.user, namespace=acme, output_name=f"b{i}", spec={}, status="failed")
                             for i in range(60)])
    first = _page(client, "/jobs?status=failed")
    assert first.count('href="/jobs/') == 50 and 'href="?status=failed&amp;page=2"' in first
    assert _page(client, "/jobs?status=failed&page=2").count('href="/jobs/') == 10


def test_job_page_shows_facts_events_and_a_loss_chart_with_one_point_per_metric_event(world, alice):
    client = _signed_in(alice)
    job_id = world["job"]["id"]
    page = _page(client, f"/jobs/{job_id[:8]}")
    assert 'class="status-succeeded">succeeded' in page and "gpu-1" in page and "1 of 3" in page
    assert '<a href="/acme/bot/versions/1">acme/bot@1</a>' in page
    assert '<a href="/acme/llama-tiny/versions/1">' in page and '<a href="/acme/data/versions/1">' in page
    losses = [m for m in METRICS if "loss" in m]
    evals = [m for m in METRICS if "eval_loss" in m]
    assert page.count('<circle data-series="loss"') == len(losses) == 6
    assert page.count('<circle data-series="eval_loss"') == len(evals) == 2
    assert page.count("<td>training loss</td>") == 6 and "<td>eval loss</td><td>6</td><td>2</td>" in page
    assert "training &lt;lora&gt;" in page and "<lora>" not in page  # the log is escaped
    assert 'id="events"' in page and "live.js" not in page  # finished: nothing polls
    assert "too short" in _page(client, f"/jobs/{job_id[:5]}", 400)
    assert client.get("/jobs/not-hex").status_code == 404


def test_job_page_pages_older_events(world, alice):
    job = Job.objects.get(pk=uuid.UUID(world["job"]["id"]))
    JobEvent.objects.bulk_create([JobEvent(job=job, seq=job.last_seq + i, type="log", time=job.created_at,
                                           data={"message": f"line {i}"}) for i in range(1, 121)])
    client = _signed_in(alice)
    page = _page(client, f"/jobs/{job.id.hex}")
    last = job.last_seq + 120
    assert page.count('<tr class="event-') == 50 and f"<td>{last}</td>" in page
    older = re.search(r'href="\?before=(\d+)#events-h"', page).group(1)
    assert int(older) == last - 49
    previous = _page(client, f"/jobs/{job.id.hex}?before={older}")
    assert f"<td>{last - 50}</td>" in previous and f"<td>{last}</td>" not in previous
    assert "`before` must be an event number" in _page(client, f"/jobs/{job.id.hex}?before=x", 400)


def test_live_endpoint_reports_progress_new_events_and_the_chart_while_a_job_runs(world, alice, api):
    owner = api(alice.token)
    job = _submit(owner, "acme/bot-two")
    client = _signed_in(alice)
    queued = _page(client, f"/jobs/{job['id']}")
    assert f'data-live-url="/jobs/{job["id"]}/live"' in queued and "web/live.js" in queued
    claim = world["workers"].post(f"/api/v1/jobs/{job['id']}/claim", {"worker": "gpu-2"}, format="json").json()
    first = client.get(f"/jobs/{job['id']}/live?after=0").json()
    assert first["status"] == "running" and first["active"] and first["after"] == 2 and "running" in first["events"]
    w = api(claim["token"])
    batch = [{"type": "metric", "data": m} for m in METRICS[:4]]
    assert w.post(f"/api/v1/jobs/{job['id']}/events", {"attempt": 1, "events": batch}, format="json").status_code == 200
    live = client.get(f"/jobs/{job['id']}/live?after={first['after']}").json()
    assert live["after"] == 6 and live["events"].count("<tr") == 4
    assert live["progress"] == {"step": 3, "total": 6, "epoch": 0.5, "known": True}
    assert live["chart"].count('<circle data-series="loss"') == 3 and live["chart"].count('<circle data-series="eval_loss"') == 1
    quiet = client.get(f"/jobs/{job['id']}/live?after=6").json()
    assert quiet["events"] == "" and "chart" not in quiet
    assert client.get(f"/jobs/{job['id']}/live?after=-1").status_code == 400
    assert api(claim["token"]).post(f"/api/v1/jobs/{job['id']}/fail", {"attempt": 1, "code": "oom", "message": "out of memory"},
                                    format="json").status_code == 200
    done = client.get(f"/jobs/{job['id']}/live?after=6").json()
    assert done["status"] == "failed" and not done["active"]
    assert "out of memory" in _page(client, f"/jobs/{job['id']}")


def _counts(client, urls: list[str]) -> list[int]:
    counts = []
    for url in urls:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200, url
        counts.append(len(queries))
    return counts


def test_pages_run_as_many_queries_for_500_adapters_and_2000_metric_events_as_for_a_small_world(world, alice):
    client = _signed_in(alice)
    job = Job.objects.get(pk=uuid.UUID(world["job"]["id"]))
    urls = ["/acme/llama-tiny/versions/1", "/acme/bot/versions/1", "/acme/data/versions/1", f"/jobs/{job.id.hex}",
            "/jobs", "/acme/bot/compare?a=1&b=2"]
    small = _counts(client, urls)
    acme = Namespace.objects.get(name="acme")
    base = Version.objects.get(repository__name="llama-tiny", number=1)
    repos = Repository.objects.bulk_create([Repository(namespace=acme, name=f"adapter-{i}", kind="adapter",
                                                       base_model=base.repository) for i in range(500)])
    pin = {"repo": "acme/bot", "number": 1}
    Version.objects.bulk_create([Version(repository=r, number=1, digest=f"{i:064x}", base_version=base, metadata={"lineage": {
        "adapters": [{"repo": f"acme/adapter-{i}", "number": 1}, pin], "dataset": {"repo": "acme/data", "number": 1}}})
        for i, r in enumerate(repos)])
    JobEvent.objects.bulk_create([JobEvent(job=job, seq=job.last_seq + i, type="metric", time=job.created_at,
                                           data={"step": 7 + i, "loss": 1.0 / i, **({"eval_loss": 2.0 / i} if i % 10 == 0 else {})})
                                  for i in range(1, 2001)])
    Job.objects.bulk_create([Job(type="train", owner=alice.user, namespace=acme, output_name=f"adapter-{i}", spec={})
                             for i in range(500)])
    assert _counts(client, urls) == small
    page = _page(client, f"/jobs/{job.id.hex}")
    assert page.count('<circle data-series="loss"') == 6 + 2000 and page.count('<circle data-series="eval_loss"') == 2 + 200
    base_page = _page(client, "/acme/llama-tiny/versions/1")
    assert base_page.count('<a class="child"') == 8 and "and 495 more" in base_page  # 503 adapter versions on it
    assert "and 492 more" in _page(client, "/acme/bot/versions/1")  # 500 merges use it, 8 drawn
