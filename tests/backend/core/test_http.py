"""core.http.bytes_response: the one way the hub serves bytes, for the API's blob URLs and /hf resolve alike."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import api_push

DATA = b'{"text": "row 0"}\n' * 100


@pytest.fixture
def blob_url(alice, api, tmp_path):
    """A signed download URL of a local-backend blob, as the version manifest hands it out."""
    (tmp_path / "train.jsonl").write_bytes(DATA)
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    [entry] = api_push(client, "acme/data", tmp_path).json()["files"]
    assert entry["sha256"] == hashlib.sha256(DATA).hexdigest()
    return entry["url"]


def test_whole_file_keeps_its_download_name(client, blob_url):
    response = client.get(blob_url)
    assert response.status_code == 200 and b"".join(response.streaming_content) == DATA
    assert response["Content-Length"] == str(len(DATA)) and response["Accept-Ranges"] == "bytes"
    # the name the manifest asked for, not the blob's path on disk
    assert response["Content-Disposition"] == 'attachment; filename="train.jsonl"'


@pytest.mark.parametrize(("header", "start", "end"), [("bytes=0-9", 0, 9), ("bytes=100-", 100, len(DATA) - 1),
                                                      ("bytes=-5", len(DATA) - 5, len(DATA) - 1)])
def test_one_range_is_a_206_with_exactly_those_bytes(client, blob_url, header, start, end):
    response = client.get(blob_url, HTTP_RANGE=header)
    assert response.status_code == 206 and b"".join(response.streaming_content) == DATA[start:end + 1]
    assert response["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response["Content-Length"] == str(end - start + 1)


def test_head_has_the_length_and_no_body(client, blob_url):
    response = client.head(blob_url)
    assert response.status_code == 200 and response.content == b"" and response["Content-Length"] == str(len(DATA))


def test_a_range_outside_the_file_is_a_416_in_the_error_shape(client, blob_url):
    response = client.get(blob_url, HTTP_RANGE=f"bytes={len(DATA)}-")
    assert response.status_code == 416 and response.json()["error"]["code"] == "range_not_satisfiable"


def test_generated_bytes_are_served_the_same_way(client, alice, blob_url):
    """The /hf model card is generated in memory: Range and HEAD behave as for a file."""
    headers = {"HTTP_AUTHORIZATION": f"Bearer {alice.token}"}
    card = client.get("/hf/datasets/acme/data/resolve/main/README.md", **headers).content
    part = client.get("/hf/datasets/acme/data/resolve/main/README.md", HTTP_RANGE="bytes=0-2", **headers)
    assert part.status_code == 206 and part.content == card[:3] and part["Content-Range"] == f"bytes 0-2/{len(card)}"
    head = client.head("/hf/datasets/acme/data/resolve/main/README.md", **headers)
    assert head.content == b"" and head["Content-Length"] == str(len(card))
    outside = client.get("/hf/datasets/acme/data/resolve/main/README.md", HTTP_RANGE=f"bytes={len(card)}-", **headers)
    assert outside.status_code == 416
