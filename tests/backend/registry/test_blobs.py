"""Garbage collection of blobs no version uses, and of uploads that never became one."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import timedelta

import requests
from django.core.management import call_command
from django.utils import timezone

from pefthub_server.registry.models import Blob, BlobUpload
from pefthub_server.registry.storage import get_blob_store

ORPHAN = b"an upload nobody committed\n"
ORPHAN_SPECS = [{"path": "notes.txt", "sha256": hashlib.sha256(ORPHAN).hexdigest(), "size": len(ORPHAN)}]


def _age(days: float = 2) -> None:
    then = timezone.now() - timedelta(days=days)
    Blob.objects.update(created_at=then)
    BlobUpload.objects.update(created_at=then)


def test_gc_deletes_old_orphans_only(alice, api, acme_base, capsys):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"},
                format="json")
    # upload one blob and never commit it: an orphan
    data = b"an upload nobody committed\n"
    sha = hashlib.sha256(data).hexdigest()
    specs = [{"path": "notes.txt", "sha256": sha, "size": len(data)}]
    target = client.post("/api/v1/repos/acme/bot/uploads", {"files": specs}, format="json").json()["missing"][0]
    assert client.generic("PUT", target["upload"]["url"], data, content_type="application/octet-stream").status_code == 201
    store = get_blob_store()
    used = set(Blob.objects.filter(version_files__isnull=False).values_list("sha256", flat=True))
    assert store.stat(sha) == len(data) and used

    call_command("gc_blobs")  # too young: kept
    assert Blob.objects.filter(sha256=sha).exists()
    _age()
    call_command("gc_blobs", "--dry-run")
    assert "would delete 1 blob(s)" in capsys.readouterr().out and store.stat(sha) == len(data)
    call_command("gc_blobs")
    assert not Blob.objects.filter(sha256=sha).exists() and store.stat(sha) is None
    for kept in used:  # every blob a version uses stays, in the database and in storage
        assert Blob.objects.filter(sha256=kept).exists() and store.stat(kept) is not None


def test_gc_keeps_an_old_orphan_that_was_just_uploaded_again(alice, api, acme_base):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    [target] = client.post("/api/v1/repos/acme/data/uploads", {"files": ORPHAN_SPECS}, format="json").json()["missing"]
    client.generic("PUT", target["upload"]["url"], ORPHAN, content_type="application/octet-stream")
    _age()
    # Someone sends the same bytes now: their commit relies on them, so gc keeps the blob.
    assert client.generic("PUT", target["upload"]["url"], ORPHAN, content_type="application/octet-stream").status_code == 201
    call_command("gc_blobs")
    assert get_blob_store().stat(ORPHAN_SPECS[0]["sha256"]) == len(ORPHAN)
    assert client.post("/api/v1/repos/acme/data/versions", {"files": ORPHAN_SPECS}, format="json").status_code == 201


def test_gc_removes_partial_uploads_older_than_the_grace_period(local_storage, db, capsys):
    tmp = local_storage / "tmp"
    tmp.mkdir(parents=True)
    dead, live = tmp / "0123456789abcdef-dead", tmp / "0123456789abcdef-live"
    dead.write_bytes(b"x" * 1000)  # a PUT whose server was killed mid-stream
    live.write_bytes(b"y" * 10)  # a PUT streaming right now
    two_days_ago = time.time() - 2 * 86_400
    os.utime(dead, (two_days_ago, two_days_ago))
    call_command("gc_blobs", "--dry-run")
    assert "would delete 0 blob(s), 0 bytes; 1 abandoned upload(s), 1000 bytes" in capsys.readouterr().out
    call_command("gc_blobs")
    assert "deleted 0 blob(s), 0 bytes; 1 abandoned upload(s), 1000 bytes" in capsys.readouterr().out
    assert sorted(tmp.iterdir()) == [live]


def test_gc_removes_stale_s3_staging_uploads(carol, api, s3_storage, capsys):
    client = api(carol.token)
    client.post("/api/v1/repos", {"name": "data", "kind": "dataset"}, format="json")
    [target] = client.post("/api/v1/repos/carol/data/uploads", {"files": ORPHAN_SPECS}, format="json").json()["missing"]
    upload = target["upload"]
    assert requests.put(upload["url"], data=ORPHAN, headers=upload["headers"], timeout=10).status_code == 200
    store = get_blob_store()

    def staged() -> list[str]:
        return [o["Key"] for o in store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])]

    call_command("gc_blobs")  # never committed, but younger than the grace period: kept
    assert staged() == [f"hub/uploads/{carol.user.pk}/{ORPHAN_SPECS[0]['sha256']}"]
    time.sleep(1.1)  # S3 keeps LastModified to the second
    call_command("gc_blobs", "--older-than-hours", "0")
    assert f"1 abandoned upload(s), {len(ORPHAN)} bytes" in capsys.readouterr().out
    assert staged() == []
