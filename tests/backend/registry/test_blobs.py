"""Garbage collection of blobs no version uses."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from pefthub_server.registry.models import Blob
from pefthub_server.registry.storage import get_blob_store


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
    Blob.objects.update(created_at=timezone.now() - timedelta(days=2))
    call_command("gc_blobs", "--dry-run")
    assert "would delete 1 blob(s)" in capsys.readouterr().out and store.stat(sha) == len(data)
    call_command("gc_blobs")
    assert not Blob.objects.filter(sha256=sha).exists() and store.stat(sha) is None
    for kept in used:  # every blob a version uses stays, in the database and in storage
        assert Blob.objects.filter(sha256=kept).exists() and store.stat(kept) is not None
