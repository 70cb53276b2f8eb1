"""S3 download URLs signed by `registry.presign` are botocore's own URLs, byte for byte, or botocore signs them.

moto does not check presigned signatures, so equality with botocore's URL at the same instant is the proof
that S3 accepts them; the bytes are still fetched through one from moto's server over HTTP.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore.config import Config

from pefthub_server.registry.presign import GetPresigner
from pefthub_server.registry.storage import S3BlobStore, _content_disposition
from tests.fixtures.s3 import S3_CLIENT_KWARGS

SHA = hashlib.sha256(b"x").hexdigest()
NAMES = ["adapter_model.safetensors", "README.md", "a b.json", 'quo"te\'s.txt', "modèle-日本.bin", "x*+%&=?.bin"]


def _botocore_at_same_instant(store: S3BlobStore, key: str, disposition: str | None, expires: int) -> tuple[str, str]:
    """(botocore's URL, ours signed at the X-Amz-Date botocore wrote)."""
    theirs = store.get_presigner.botocore_url(key, disposition=disposition, expires=expires)
    stamp = parse_qs(urlsplit(theirs).query)["X-Amz-Date"][0]
    now = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return theirs, store.get_presigner.sign(key, disposition=disposition, expires=expires, now=now)


@pytest.mark.parametrize(("endpoint", "kwargs"), [
    ("http://127.0.0.1:9000", {}),  # moto / MinIO style, a port
    (None, {}),  # AWS itself, us-east-1
    (None, {"region_name": "eu-central-1", "aws_session_token": "FwoG/tok+en=="}),  # a role's temporary credentials
    ("https://minio.example.test:443/", {}),  # a default port, a trailing slash
])
@pytest.mark.parametrize("name", [*NAMES, None])
def test_urls_signed_here_are_botocores(endpoint, kwargs, name) -> None:
    store = S3BlobStore("bucket-1", "hub/pre fix", endpoint_url=endpoint, client_kwargs={**S3_CLIENT_KWARGS, **kwargs})
    assert store.get_presigner.signs_here
    theirs, ours = _botocore_at_same_instant(store, store.key(SHA), _content_disposition(name) if name else None, 600)
    assert ours == theirs


def test_a_client_whose_urls_differ_is_left_to_botocore() -> None:
    # virtual-hosted addressing puts the bucket in the host: not what GetPresigner writes
    store = S3BlobStore("bucket-1", "hub", client_kwargs={**S3_CLIENT_KWARGS,
                                                          "config": Config(s3={"addressing_style": "virtual"})})
    assert not store.get_presigner.signs_here
    url = store.download_url(SHA, base_url="", filename="a.json", expires=60)
    assert url.startswith("https://bucket-1.s3.amazonaws.com/hub/blobs/sha256/")


def test_a_signer_that_fails_leaves_urls_to_botocore() -> None:
    store = S3BlobStore("bucket-1", "hub", client_kwargs=dict(S3_CLIENT_KWARGS))
    with mock.patch.object(GetPresigner, "sign", side_effect=AttributeError("_request_signer")):
        assert not store.get_presigner.signs_here
        assert "X-Amz-Signature=" in store.download_url(SHA, base_url="", expires=60)


def test_each_url_is_signed_when_handed_out_for_the_whole_lifetime(s3_bucket) -> None:
    endpoint, bucket = s3_bucket
    store = S3BlobStore(bucket, "hub", endpoint_url=endpoint, client_kwargs=dict(S3_CLIENT_KWARGS))
    assert store.get_presigner.signs_here
    before = datetime.now(UTC).replace(microsecond=0)
    q = parse_qs(urlsplit(store.download_url(SHA, base_url="", expires=1234)).query)
    signed_at = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert q["X-Amz-Expires"] == ["1234"] and 0 <= (signed_at - before).total_seconds() <= 5


def test_a_url_signed_here_serves_the_blob_with_its_name(s3_bucket) -> None:
    endpoint, bucket = s3_bucket
    store = S3BlobStore(bucket, "hub", endpoint_url=endpoint, client_kwargs=dict(S3_CLIENT_KWARGS))
    data = b"presigned here" * 100
    sha = hashlib.sha256(data).hexdigest()
    store.save_bytes(sha, data)
    assert store.get_presigner.signs_here
    resp = requests.get(store.download_url(sha, base_url="", filename="modèle.bin", expires=60), timeout=10)
    assert resp.status_code == 200 and resp.content == data
    assert "filename*=UTF-8''mod%C3%A8le.bin" in resp.headers["Content-Disposition"]
