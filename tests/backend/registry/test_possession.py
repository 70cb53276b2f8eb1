"""Knowing a sha256 is not access: a push may cite a blob only if its user can read a version
holding it or sent the bytes itself; nothing tells carol a size or the existence of alice's blob.

alice keeps a private dataset `acme/secret`; bob (write in acme) is her teammate; carol writes
only in her own namespace. Both backends: the local directory and S3 (moto's server over HTTP).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from django.utils import timezone

from pefthub_server.registry.blobs import UPLOAD_GRACE
from pefthub_server.registry.models import Blob, BlobUpload, Repository, Version
from pefthub_server.registry.storage import blob_key, get_blob_store

SECRET = b'{"text": "what alice keeps to herself"}\n' * 40
SHA = hashlib.sha256(SECRET).hexdigest()
CITED = [{"path": "train.jsonl", "sha256": SHA, "size": len(SECRET)}]


@pytest.fixture(params=["local", "s3"])
def backend(request):
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    return request.param


def put(client, target: dict, data: bytes):
    """Send bytes where a negotiation said: through the hub (local) or straight to S3."""
    upload = target["upload"]
    if upload["url"].startswith("http://testserver/"):
        response = client.generic("PUT", upload["url"], data, content_type="application/octet-stream")
        return response.status_code
    return requests.put(upload["url"], data=data, headers=upload["headers"], timeout=10).status_code


def create(client, repo: str) -> None:
    namespace, name = repo.split("/")
    body = {"namespace": namespace, "name": name, "kind": "dataset"}
    assert client.post("/api/v1/repos", body, format="json").status_code == 201


@pytest.fixture
def secret(alice, api, backend):
    """alice's private `acme/secret@1`, holding SECRET."""
    client = api(alice.token)
    create(client, "acme/secret")
    [target] = negotiate(client, "acme/secret")["missing"]
    assert put(client, target, SECRET) in (200, 201)
    response = commit(client, "acme/secret")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def carol_repo(carol, api):
    client = api(carol.token)
    create(client, "carol/stolen")
    return client


def negotiate(client, repo: str, files=CITED, **extra):
    response = client.post(f"/api/v1/repos/{repo}/uploads", {"files": files, **extra}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def commit(client, repo: str, files=CITED):
    return client.post(f"/api/v1/repos/{repo}/versions", {"files": files}, format="json")


def test_negotiate_answers_missing_for_a_blob_carol_cannot_read(secret, carol_repo, carol):
    plan = negotiate(carol_repo, "carol/stolen")
    assert plan["present"] == []
    [missing] = plan["missing"]
    assert (missing["sha256"], missing["size"]) == (SHA, len(SECRET))
    assert missing["upload"]["method"] == "PUT"


@pytest.mark.parametrize("declared", [len(SECRET), len(SECRET) + 1, 1])
def test_committing_an_unreadable_blob_is_missing_blob_whatever_the_size(secret, carol_repo, declared):
    cited = [{**CITED[0], "size": declared}]
    refused = commit(carol_repo, "carol/stolen", cited)
    # The answer for a blob nobody ever uploaded, at the same size: carol must not tell them apart.
    never = hashlib.sha256(b"nobody has these bytes").hexdigest()
    unknown = commit(carol_repo, "carol/stolen", [{**cited[0], "sha256": never}])
    assert refused.status_code == unknown.status_code == 400
    error, other = refused.json()["error"], unknown.json()["error"]
    assert error["code"] == other["code"] == "missing_blob"
    assert error["message"] == other["message"].replace(never, SHA)
    assert error["detail"] == {"sha256": SHA}
    assert str(len(SECRET)) not in refused.content.decode()  # alice's real size is never told
    assert not Version.objects.filter(repository__name="stolen").exists()


def test_carol_cannot_download_alices_blob_by_hash_or_get_a_url_for_it(secret, alice, bob, carol, api, backend):
    never = hashlib.sha256(b"no such blob").hexdigest()
    for client in (api(carol.token), api()):
        assert client.get("/api/v1/repos/acme/secret/versions/1").status_code == 404  # where signed URLs come from
        assert client.get("/hf/datasets/acme/secret/resolve/main/train.jsonl").status_code == 404
        mine, nobodys = client.get(f"/api/v1/blobs/{SHA}"), client.get(f"/api/v1/blobs/{never}")
        assert mine.status_code == nobodys.status_code == 404
        assert mine.json() == nobodys.json()
    if backend == "local":  # only the local backend serves bytes by hash: to those who can read them
        for reader in (alice, bob):
            assert api(reader.token).get(f"/api/v1/blobs/{SHA}").getvalue() == SECRET


def test_after_sending_the_bytes_herself_carol_may_commit_them(secret, carol_repo, carol, backend):
    store = get_blob_store()
    [target] = negotiate(carol_repo, "carol/stolen")["missing"]
    assert commit(carol_repo, "carol/stolen").json()["error"]["code"] == "missing_blob"  # not sent yet
    assert put(carol_repo, target, SECRET) in (200, 201)
    created = commit(carol_repo, "carol/stolen")
    assert created.status_code == 201, created.content
    assert [f["sha256"] for f in created.json()["files"]] == [SHA]
    assert BlobUpload.objects.filter(user=carol.user, blob_id=SHA).exists()
    assert Blob.objects.filter(sha256=SHA).count() == 1 and store.read_range(SHA, 0, len(SECRET)) == SECRET
    assert negotiate(carol_repo, "carol/stolen")["present"] == [SHA]
    if backend == "s3":  # carol wrote only her staging key; the blob's key holds what the hub copied
        listed = store.client.list_objects_v2(Bucket=store.bucket)["Contents"]
        assert [o["Key"] for o in listed] == [f"hub/{blob_key(SHA)}"]
        assert urlsplit(target["upload"]["url"]).path.endswith(f"/hub/uploads/{carol.user.pk}/{SHA}")


def test_a_teammate_pushing_the_same_bytes_uploads_nothing(secret, bob, api):
    client = api(bob.token)
    create(client, "acme/copy")
    assert negotiate(client, "acme/copy") == {"missing": [], "present": [SHA]}
    assert commit(client, "acme/copy").status_code == 201


def test_a_wrong_size_for_a_readable_blob_may_say_so(secret, bob, api):
    client = api(bob.token)
    response = client.post("/api/v1/repos/acme/copy/versions",
                           {"files": [{**CITED[0], "size": len(SECRET) + 1}], "kind": "dataset"}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "size_mismatch"
    assert not Repository.objects.filter(name="copy").exists()  # a refused first push leaves no repository


def test_an_upload_counts_as_carols_only_within_the_grace_period(secret, carol_repo, carol, backend):
    [target] = negotiate(carol_repo, "carol/stolen")["missing"]
    assert put(carol_repo, target, SECRET) in (200, 201)
    if backend == "s3":  # the upload is accepted at commit; any version of hers will do
        assert commit(carol_repo, "carol/stolen").status_code == 201
        Version.objects.filter(repository__name="stolen").delete()
    assert negotiate(carol_repo, "carol/stolen")["present"] == [SHA]
    BlobUpload.objects.filter(user=carol.user).update(created_at=timezone.now() - UPLOAD_GRACE - timedelta(minutes=1))
    assert negotiate(carol_repo, "carol/stolen")["present"] == []
    assert commit(carol_repo, "carol/stolen").json()["error"]["code"] == "missing_blob"


@pytest.mark.parametrize("backend", ["local"])
def test_a_local_upload_url_is_bound_to_the_user_it_was_handed_to(secret, carol_repo, carol, alice, api):
    [target] = negotiate(carol_repo, "carol/stolen")["missing"]
    parts = urlsplit(target["upload"]["url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["user"] == str(carol.user.pk)
    as_alice = f"{parts.path}?{urlencode({**query, 'user': alice.user.pk})}"
    response = carol_repo.generic("PUT", as_alice, SECRET, content_type="application/octet-stream")
    assert response.status_code == 403 and response.json()["error"]["code"] == "invalid_upload_url"
    # One way in: a write token without the signed URL uploads nothing, signed in or not.
    response = carol_repo.generic("PUT", f"/api/v1/blobs/{SHA}", SECRET, content_type="application/octet-stream")
    assert response.status_code == 403 and "POST /api/v1/repos/" in response.json()["error"]["message"]
    response = api().generic("PUT", f"/api/v1/blobs/{SHA}", SECRET, content_type="application/octet-stream")
    assert response.status_code == 401
    assert not BlobUpload.objects.filter(blob_id=SHA).exclude(user=alice.user).exists()
