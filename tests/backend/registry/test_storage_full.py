"""A full disk under the local blob store: the PUT answers 507 with what to do, and leaves nothing.

The store sits on a real 1 MiB tmpfs (mounting needs CAP_SYS_ADMIN, as root in the test
container; elsewhere the test is skipped and says why), so the kernel itself answers ENOSPC.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from pefthub_server.registry.models import Blob


@pytest.fixture
def tiny_disk(local_storage):
    local_storage.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(local_storage)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield local_storage
    subprocess.run(["umount", str(local_storage)], check=True)


def _negotiate(client, data: bytes) -> dict:
    files = [{"path": "train.jsonl", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]
    response = client.post("/api/v1/repos/acme/data/uploads", {"files": files}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["missing"][0]


def test_a_put_onto_a_full_disk_is_507_and_leaves_no_partial_file(alice, api, tiny_disk):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    big = b'{"text": "%d"}\n' % 7 * 200_000  # 2.8 MB onto a 1 MiB disk
    target = _negotiate(client, big)
    response = client.generic("PUT", target["upload"]["url"], big, content_type="application/octet-stream")
    assert response.status_code == 507, response.content
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage"
    assert "blob storage is full" in error["message"] and "operator" in error["message"]
    assert list((tiny_disk / "tmp").iterdir()) == []  # the partial upload is gone...
    assert not Blob.objects.filter(sha256=target["sha256"]).exists()
    small = b'{"text": "fits"}\n'  # ...so the space is free again for what fits
    target = _negotiate(client, small)
    assert client.generic("PUT", target["upload"]["url"], small, content_type="application/octet-stream").status_code == 201
