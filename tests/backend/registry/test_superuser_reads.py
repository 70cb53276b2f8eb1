"""One visibility rule: a staff superuser (the operator) reads every repository and job, through the
same selectors as everyone, so the API, /hf and the pages agree; reading is all it adds."""

from __future__ import annotations

import pytest
from django.test import Client

from pefthub_server.core.tokens import token_create
from pefthub_server.jobs.models import Job
from pefthub_server.registry.models import Namespace
from pefthub_server.registry.teams import user_ensure
from tests.conftest import api_push

DIARY = b'{"text": "dear diary"}\n'


@pytest.fixture
def diary(carol, api, tmp_path):
    """carol's private dataset `carol/diary` (version 1: train.jsonl) and a job of hers writing into her namespace."""
    folder = tmp_path / "diary"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(DIARY)
    client = api(carol.token)
    made = client.post("/api/v1/repos", {"namespace": "carol", "name": "diary", "kind": "dataset"}, format="json")
    assert made.status_code == 201 and made.json()["visibility"] == "private"
    assert api_push(client, "carol/diary", folder).status_code == 201
    return Job.objects.create(type="train", owner=carol.user, namespace=Namespace.objects.get(name="carol"),
                              output_name="diary-bot", spec={})


@pytest.fixture
def root(db):
    user = user_ensure(username="root", staff=True)  # `pefthub-server adduser root --staff`
    assert user.is_staff and user.is_superuser
    return user, token_create(user=user, scope="read")[1]


def test_staff_superuser_reads_a_private_repo_and_job_through_the_api_hf_and_pages(diary, root, bob, api):
    user, secret = root
    client = api(secret)
    assert client.get("/api/v1/repos/carol/diary").json()["visibility"] == "private"
    assert "carol/diary" in [f"{repo['namespace']}/{repo['name']}" for repo in client.get("/api/v1/repos").json()["results"]]
    assert client.get("/api/v1/repos/carol/diary/versions/1").status_code == 200
    assert b"".join(client.get("/hf/datasets/carol/diary/resolve/main/train.jsonl").streaming_content) == DIARY
    assert client.get("/hf/api/datasets/carol/diary").json()["private"] is True
    assert client.get(f"/api/v1/jobs/{diary.id}").json()["id"] == diary.id.hex
    assert diary.id.hex in [job["id"] for job in client.get("/api/v1/jobs").json()["results"]]
    page = Client()
    page.force_login(user)
    assert "carol/diary" in page.get("/").content.decode()
    # Everyone else: exactly what the API lets them read (bob is no member of carol's namespace).
    assert api(bob.token).get("/api/v1/repos/carol/diary").status_code == 404
    assert api(bob.token).get("/hf/datasets/carol/diary/resolve/main/train.jsonl").status_code == 404
    assert api(bob.token).get(f"/api/v1/jobs/{diary.id}").status_code == 404
    bob_page = Client()
    bob_page.force_login(bob.user)
    assert "carol/diary" not in bob_page.get("/").content.decode()


def test_staff_alone_or_superuser_alone_reads_nothing_more(diary, api):
    for staff, superuser in ((True, False), (False, True)):
        user = user_ensure(username=f"half-{int(staff)}")
        user.is_staff, user.is_superuser = staff, superuser
        user.save()
        client = api(token_create(user=user, scope="read")[1])
        assert client.get("/api/v1/repos/carol/diary").status_code == 404
        assert client.get(f"/api/v1/jobs/{diary.id}").status_code == 404


def test_reading_everything_gives_no_right_to_change(diary, root, api):
    user, _ = root
    client = api(token_create(user=user, scope="admin")[1])
    refused = client.delete("/api/v1/repos/carol/diary")
    assert refused.status_code == 403 and "role in `carol`" in refused.json()["error"]["message"]
    assert client.post(f"/api/v1/jobs/{diary.id}/cancel").status_code == 403
