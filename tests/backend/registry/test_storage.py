"""Blob storage: both backends with real bytes; S3 against moto's server over HTTP.

The storage classes need no Django settings; only the ``get_blob_store`` test reads
them (configuring the minimum itself when pytest-django has not).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from botocore.exceptions import ClientError

from pefthub_server.core.errors import NotFound, ValidationFailed
from pefthub_server.registry.storage import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_key,
    get_blob_store,
    storage_from_url,
)
from tests.fixtures.s3 import S3_CLIENT_KWARGS, s3_client

BASE_URL = "http://hub.test"


def blob(n: int = 4096, seed: int = 0) -> tuple[bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "store", secret="s3cret")


@pytest.fixture
def s3_store(s3_bucket: tuple[str, str]) -> S3BlobStore:
    endpoint, bucket = s3_bucket
    return S3BlobStore(bucket, "hub", endpoint_url=endpoint, client_kwargs=dict(S3_CLIENT_KWARGS))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> BlobStore:
    return request.getfixturevalue(f"{request.param}_store")


def errcode(excinfo: pytest.ExceptionInfo[ValidationFailed]) -> str:
    return excinfo.value.code


# --- keys ---------------------------------------------------------------------------

def test_blob_key_fans_out_by_digest_prefix() -> None:
    sha = "ab" + "cd" + "0" * 60
    assert blob_key(sha) == f"blobs/sha256/ab/cd/{sha}"


@pytest.mark.parametrize("bad", ["", "A" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 63 + "\n", None])
def test_blob_key_refuses_anything_but_64_lowercase_hex(bad: object) -> None:
    with pytest.raises(ValidationFailed) as exc:
        blob_key(bad)  # type: ignore[arg-type]
    assert errcode(exc) == "invalid_digest"


# --- both backends --------------------------------------------------------------------

def test_save_stream_then_read_back_identical_bytes(store: BlobStore) -> None:
    data, sha = blob(100_000)
    assert store.stat(sha) is None
    assert store.save_stream(sha, io.BytesIO(data), len(data)) == len(data)
    assert store.stat(sha) == len(data)
    assert store.read_range(sha, 10, 10) == data[10:20]
    assert store.read_range(sha, len(data) - 5, 100) == data[-5:]
    assert store.read_range(sha, len(data) + 10, 5) == b""
    with store.open(sha) as f:
        assert f.read() == data


def test_save_stream_with_wrong_digest_leaves_nothing(store: BlobStore) -> None:
    data, _ = blob(5000)
    _, other_sha = blob(5000, seed=1)
    with pytest.raises(ValidationFailed) as exc:
        store.save_stream(other_sha, io.BytesIO(data), len(data))
    assert errcode(exc) == "digest_mismatch"
    assert other_sha in exc.value.message and hashlib.sha256(data).hexdigest() in exc.value.message
    assert store.stat(other_sha) is None


@pytest.mark.parametrize("announced", [4999, 5001])
def test_save_stream_with_wrong_size_leaves_nothing(store: BlobStore, announced: int) -> None:
    data, sha = blob(5000)
    with pytest.raises(ValidationFailed) as exc:
        store.save_stream(sha, io.BytesIO(data), announced)
    assert errcode(exc) == "size_mismatch"
    assert str(announced) in exc.value.message
    assert store.stat(sha) is None


def test_save_stream_without_size_still_checks_digest(store: BlobStore) -> None:
    data, sha = blob(3000)
    assert store.save_stream(sha, io.BytesIO(data), None) == 3000
    with pytest.raises(ValidationFailed):
        store.save_stream(blob(3000, seed=2)[1], io.BytesIO(data), None)


def test_save_stream_of_present_blob_is_idempotent_but_still_verifies(store: BlobStore) -> None:
    data, sha = blob(3000)
    store.save_stream(sha, io.BytesIO(data), len(data))
    stream = io.BytesIO(data)
    assert store.save_stream(sha, stream, len(data)) == len(data)
    assert stream.read() == b""  # drained
    with pytest.raises(ValidationFailed) as exc:
        store.save_stream(sha, io.BytesIO(data[:-1] + b"?"), len(data))
    assert errcode(exc) == "digest_mismatch"
    assert store.read_range(sha, 0, len(data)) == data  # the good copy stays


def test_save_bytes_verifies_the_hash(store: BlobStore) -> None:
    data, sha = blob(777)
    store.save_bytes(sha, data)
    assert store.read_range(sha, 0, 777) == data
    with pytest.raises(ValidationFailed) as exc:
        store.save_bytes(blob(777, seed=3)[1], data)
    assert errcode(exc) == "digest_mismatch"


def test_a_stored_blob_is_no_upload_of_anyone(store: BlobStore) -> None:
    data, sha = blob(2048)
    assert store.accept_upload(sha, 2048, user_id=7) is False
    store.save_bytes(sha, data)
    # The hub holding the bytes proves nothing about user 7: it must send them itself.
    assert store.accept_upload(sha, 2048, user_id=7) is False
    assert store.stat(sha) == 2048


def test_purge_stale_uploads_of_an_empty_store(store: BlobStore) -> None:
    assert store.purge_stale_uploads(before=datetime.now(UTC) + timedelta(days=1)) == (0, 0)


def test_reading_a_missing_blob_is_not_found(store: BlobStore) -> None:
    _, sha = blob(10)
    with pytest.raises(NotFound):
        store.read_range(sha, 0, 10)
    with pytest.raises(NotFound):
        store.open(sha)


def test_delete_removes_and_tolerates_absence(store: BlobStore) -> None:
    data, sha = blob(100)
    store.save_bytes(sha, data)
    store.delete(sha)
    assert store.stat(sha) is None
    store.delete(sha)


def test_saving_a_20_mib_blob_keeps_peak_memory_low(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(20):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            f.write(chunk)
    sha = digest.hexdigest()
    with src.open("rb") as f:
        tracemalloc.start()
        try:
            assert store.save_stream(sha, f, 20 * 1024 * 1024) == 20 * 1024 * 1024
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    with src.open("rb") as f:
        f.seek(12_345_678)
        assert store.read_range(sha, 12_345_678, 1000) == f.read(1000)


# --- local backend ------------------------------------------------------------------------

def test_local_files_live_under_their_key_and_temp_files_are_cleaned(local_store: LocalBlobStore) -> None:
    data, sha = blob(100)
    local_store.save_bytes(sha, data)
    assert local_store.path(sha) == local_store.root / "blobs" / "sha256" / sha[:2] / sha[2:4] / sha
    assert local_store.path(sha).read_bytes() == data
    with pytest.raises(ValidationFailed):
        local_store.save_stream(blob(100, seed=9)[1], io.BytesIO(data), 100)
    assert list((local_store.root / "tmp").iterdir()) == []


def test_local_purge_removes_only_temp_files_older_than_the_cutoff(local_store: LocalBlobStore) -> None:
    data, sha = blob(100)
    local_store.save_bytes(sha, data)
    tmp = local_store.root / "tmp"
    old, fresh = tmp / f"{sha[:16]}-dead", tmp / f"{sha[:16]}-streaming"
    old.write_bytes(b"x" * 300)  # what a killed upload leaves
    fresh.write_bytes(b"y" * 50)
    day_ago = time.time() - 86_400
    os.utime(old, (day_ago, day_ago))
    cutoff = datetime.now(UTC) - timedelta(hours=1)
    assert local_store.purge_stale_uploads(before=cutoff, dry_run=True) == (1, 300)
    assert old.exists()
    assert local_store.purge_stale_uploads(before=cutoff) == (1, 300)
    assert sorted(tmp.iterdir()) == [fresh] and local_store.read_range(sha, 0, 100) == data


def _query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}


def test_local_upload_target_is_a_signed_put_for_one_user_that_only_uploads(local_store: LocalBlobStore) -> None:
    data, sha = blob(500)
    target = local_store.upload_target(sha, 500, user_id=7, base_url=BASE_URL + "/")
    assert target["method"] == "PUT"
    assert target["url"].startswith(f"{BASE_URL}/api/v1/blobs/{sha}?")
    path, q = _query(target["url"])
    assert q["user"] == "7"
    assert local_store.check_signature(sha, "PUT", q["expires"], q["sig"], "7")
    assert not local_store.check_signature(sha, "PUT", q["expires"], q["sig"], "8")  # another user's
    assert not local_store.check_signature(sha, "PUT", q["expires"], q["sig"])
    assert not local_store.check_signature(sha, "GET", q["expires"], q["sig"], "7")
    assert not local_store.check_signature(blob(500, seed=1)[1], "PUT", q["expires"], q["sig"], "7")
    assert not local_store.check_signature(sha, "PUT", str(int(q["expires"]) + 1), q["sig"], "7")
    assert not local_store.check_signature(sha, "PUT", q["expires"], None, "7")
    assert not local_store.check_signature(sha, "PUT", "soon", q["sig"], "7")
    assert not local_store.check_signature("../etc", "PUT", q["expires"], q["sig"], "7")
    # What the PUT view does with an accepted request: stream the body into the store.
    local_store.save_stream(path.rsplit("/", 1)[1], io.BytesIO(data), 500)
    assert local_store.read_range(sha, 0, 500) == data


def test_local_download_url_signature_allows_get_and_head_only(local_store: LocalBlobStore) -> None:
    _, sha = blob(500)
    url = local_store.download_url(sha, base_url=BASE_URL, filename="adapter model.safetensors", expires=60)
    _, q = _query(url)
    assert q["filename"] == "adapter model.safetensors"
    assert local_store.check_signature(sha, "GET", q["expires"], q["sig"])
    assert local_store.check_signature(sha, "head", q["expires"], q["sig"])
    assert not local_store.check_signature(sha, "PUT", q["expires"], q["sig"])
    assert not LocalBlobStore(local_store.root, secret="other").check_signature(sha, "GET", q["expires"], q["sig"])


def test_a_signature_with_other_than_ascii_is_refused(local_store: LocalBlobStore) -> None:
    """hmac.compare_digest raises on a non-ASCII str: a query `sig=é…` was a 500 (found by tests/fuzz)."""
    _, sha = blob(500)
    assert not local_store.check_signature(sha, "GET", str(int(time.time()) + 60), "é" * 64)


def test_local_signatures_expire(local_store: LocalBlobStore) -> None:
    _, sha = blob(500)
    past = int(time.time()) - 1
    assert not local_store.check_signature(sha, "GET", str(past), local_store.sign(sha, "GET", past))
    _, q = _query(local_store.download_url(sha, base_url=BASE_URL, expires=-5))
    assert not local_store.check_signature(sha, "GET", q["expires"], q["sig"])


# --- S3 backend -----------------------------------------------------------------------------

def _keys(s3_store: S3BlobStore) -> list[str]:
    return [o["Key"] for o in s3_store.client.list_objects_v2(Bucket=s3_store.bucket).get("Contents", [])]


def test_s3_presigned_put_goes_to_the_users_staging_key_and_accept_copies_it_into_place(s3_store: S3BlobStore) -> None:
    data, sha = blob(10_000)
    target = s3_store.upload_target(sha, len(data), user_id=7, base_url=BASE_URL)
    assert target["method"] == "PUT"
    assert urlsplit(target["url"]).path == f"/{s3_store.bucket}/hub/uploads/7/{sha}"  # never the blob's own key
    assert set(target["headers"]) == {"x-amz-checksum-sha256"}
    signed = parse_qs(urlsplit(target["url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "x-amz-checksum-sha256"} <= set(signed)
    resp = requests.put(target["url"], data=data, headers=target["headers"], timeout=10)
    assert resp.status_code == 200, resp.text
    assert s3_store.stat(sha) is None and _keys(s3_store) == [f"hub/uploads/7/{sha}"]
    # moto neither stores nor returns the checksum header of a presigned PUT...
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=s3_store.staging_key(sha, 7), ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head
    assert s3_store.accept_upload(sha, len(data), user_id=8) is False  # another user's upload proves nothing
    assert s3_store.accept_upload(sha, len(data), user_id=7) is True  # ...so this hashed the object itself
    assert s3_store.read_range(sha, 0, len(data)) == data
    assert _keys(s3_store) == [f"hub/{blob_key(sha)}"]  # the staging copy is gone


@pytest.mark.parametrize("single_copy_max", [5 * 1024**3, 1000])  # one CopyObject; parts, as past S3's 5 GB limit
def test_s3_headerless_upload_is_hashed_and_copied_into_place(s3_store: S3BlobStore, single_copy_max: int) -> None:
    """The target Git LFS's basic transfer (huggingface_hub) PUTs to, with no header at all."""
    s3_store.single_copy_max = single_copy_max
    data, sha = blob(20_000)
    target = s3_store.upload_target(sha, len(data), user_id=7, base_url=BASE_URL, headerless=True)
    assert target["headers"] == {} and urlsplit(target["url"]).path == f"/{s3_store.bucket}/hub/uploads/7/{sha}"
    assert requests.put(target["url"], data=data, timeout=10).status_code == 200
    assert s3_store.accept_upload(sha, len(data), user_id=7) is True
    assert s3_store.read_range(sha, 0, len(data)) == data and _keys(s3_store) == [f"hub/{blob_key(sha)}"]
    wrong = requests.put(s3_store.upload_target(sha, len(data), user_id=7, base_url=BASE_URL, headerless=True)["url"],
                         data=bytes(len(data)), timeout=10)  # the right size, other bytes
    assert wrong.status_code == 200
    with pytest.raises(ValidationFailed) as exc:
        s3_store.accept_upload(sha, len(data), user_id=7)
    assert errcode(exc) == "digest_mismatch" and s3_store.read_range(sha, 0, len(data)) == data


def test_s3_accepting_an_upload_of_a_stored_blob_keeps_the_stored_one(s3_store: S3BlobStore) -> None:
    data, sha = blob(3000)
    s3_store.save_bytes(sha, data)
    target = s3_store.upload_target(sha, len(data), user_id=3, base_url=BASE_URL)
    assert requests.put(target["url"], data=data, headers=target["headers"], timeout=10).status_code == 200
    assert s3_store.accept_upload(sha, len(data), user_id=3) is True
    assert _keys(s3_store) == [f"hub/{blob_key(sha)}"] and s3_store.read_range(sha, 0, len(data)) == data


@pytest.mark.parametrize("wrong", ["same_length", "longer"])
def test_s3_presigned_put_of_wrong_bytes_is_caught_and_discarded(s3_store: S3BlobStore, wrong: str) -> None:
    data, sha = blob(10_000)
    bad = data[:-1] + b"!" if wrong == "same_length" else data + b"!"
    target = s3_store.upload_target(sha, len(data), user_id=7, base_url=BASE_URL)
    resp = requests.put(target["url"], data=bad, headers=target["headers"], timeout=10)
    # Real S3 refuses this PUT (BadDigest, and the signed Content-Length differs);
    # moto checks neither signatures nor checksums and stores the bytes.
    assert resp.status_code == 200
    with pytest.raises(ValidationFailed) as exc:
        s3_store.accept_upload(sha, len(data), user_id=7)
    assert errcode(exc) == ("digest_mismatch" if wrong == "same_length" else "size_mismatch")
    assert _keys(s3_store) == []  # neither the blob nor the upload


def test_s3_accept_trusts_a_stored_sha256_checksum(s3_store: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data, sha = blob(4000)
    # An SDK upload that asks for SHA256 makes moto record the checksum.
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.staging_key(sha, 7), Body=data,
                               ChecksumAlgorithm="SHA256")

    def no_download(_sha: str, _key: str) -> str:
        raise AssertionError("accept_upload downloaded the object despite a matching checksum")

    monkeypatch.setattr(s3_store, "_hash_object", no_download)
    assert s3_store.accept_upload(sha, len(data), user_id=7) is True
    assert s3_store.read_range(sha, 0, len(data)) == data


def test_s3_moto_keeps_a_claimed_checksum_unchecked_so_trust_can_be_turned_off(s3_store: S3BlobStore) -> None:
    data, sha = blob(4000)
    target = s3_store.upload_target(sha, len(data), user_id=7, base_url=BASE_URL)
    # Adding x-amz-sdk-checksum-algorithm makes moto store the claimed checksum as-is;
    # AWS S3 would answer 400 BadDigest to this PUT.
    headers = {**target["headers"], "x-amz-sdk-checksum-algorithm": "SHA256"}
    assert requests.put(target["url"], data=b"evil" * 1000, headers=headers, timeout=10).status_code == 200
    s3_store.trust_checksums = False
    with pytest.raises(ValidationFailed) as exc:
        s3_store.accept_upload(sha, len(data), user_id=7)
    assert errcode(exc) == "digest_mismatch"
    assert hashlib.sha256(b"evil" * 1000).hexdigest() in exc.value.message
    assert _keys(s3_store) == []


def test_s3_purge_removes_only_staged_uploads_older_than_the_cutoff(s3_store: S3BlobStore) -> None:
    data, sha = blob(1000)
    s3_store.save_bytes(sha, data)
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=s3_store.staging_key(sha, 5), Body=data)
    assert s3_store.purge_stale_uploads(before=datetime.now(UTC) - timedelta(hours=1)) == (0, 0)  # too young
    assert s3_store.purge_stale_uploads(before=datetime.now(UTC) + timedelta(minutes=1), dry_run=True) == (1, 1000)
    assert len(_keys(s3_store)) == 2
    assert s3_store.purge_stale_uploads(before=datetime.now(UTC) + timedelta(minutes=1)) == (1, 1000)
    assert _keys(s3_store) == [f"hub/{blob_key(sha)}"]  # blobs are gc's to judge, not this


def test_s3_download_url_serves_bytes_ranges_and_filename(s3_store: S3BlobStore) -> None:
    data, sha = blob(50_000)
    s3_store.save_stream(sha, io.BytesIO(data), len(data))
    url = s3_store.download_url(sha, base_url=BASE_URL, filename="adapter_model.safetensors", expires=300)
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200 and resp.content == data
    assert 'filename="adapter_model.safetensors"' in resp.headers["Content-Disposition"]
    resp = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert resp.status_code == 206 and resp.content == data[10:20]


def test_s3_multipart_upload_above_threshold(s3_store: S3BlobStore) -> None:
    data = os.urandom(12 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    s3_store.multipart_threshold = s3_store.part_size = 5 * 1024 * 1024
    assert s3_store.save_stream(sha, io.BytesIO(data), len(data)) == len(data)
    assert s3_store.read_range(sha, 6 * 1024 * 1024, 100) == data[6 * 1024 * 1024:][:100]


def test_s3_keys_carry_the_prefix(s3_store: S3BlobStore) -> None:
    data, sha = blob(10)
    s3_store.save_bytes(sha, data)
    listed = s3_store.client.list_objects_v2(Bucket=s3_store.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"hub/{blob_key(sha)}"]


def test_s3_ensure_bucket_creates_only_when_missing(moto_server: str) -> None:
    name = f"pefthub-ensure-{uuid.uuid4().hex[:12]}"
    store = S3BlobStore(name, endpoint_url=moto_server, client_kwargs=dict(S3_CLIENT_KWARGS))
    data, sha = blob(10)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        store.save_bytes(sha, data)  # no implicit bucket creation
    store.ensure_bucket()
    store.ensure_bucket()
    assert name in [b["Name"] for b in s3_client(moto_server).list_buckets()["Buckets"]]
    store.save_bytes(sha, data)


# --- configuration ----------------------------------------------------------------------------

def test_storage_from_url_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = storage_from_url(f"file://{tmp_path}/blobs", secret="k")
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "blobs"
    monkeypatch.chdir(tmp_path)
    store = storage_from_url("file://data/blobs", secret="k")
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "data" / "blobs"
    assert store.serves_bytes


def test_storage_from_url_s3_reads_endpoint_from_env(s3_bucket: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = storage_from_url(f"s3://{bucket}/hub/", secret="k")
    assert isinstance(store, S3BlobStore) and not store.serves_bytes
    assert store.prefix == "hub/"
    data, sha = blob(64)
    store.save_bytes(sha, data)
    assert store.read_range(sha, 0, 64) == data


@pytest.mark.parametrize("url", ["/var/lib/pefthub", "gs://bucket", "s3://", "file://", ""])
def test_storage_from_url_refuses_unknown_forms(url: str) -> None:
    with pytest.raises(ValueError, match="PEFTHUB_STORAGE") as exc:
        storage_from_url(url, secret="k")
    assert "s3://bucket" in str(exc.value)


def test_get_blob_store_is_cached_from_settings(tmp_path: Path) -> None:
    from django.conf import settings
    from django.test import override_settings

    if not settings.configured:
        settings.configure(SECRET_KEY="test", PEFTHUB_STORAGE=f"file://{tmp_path}")
    get_blob_store.cache_clear()
    try:
        with override_settings(PEFTHUB_STORAGE=f"file://{tmp_path}/hub", SECRET_KEY="k"):
            store = get_blob_store()
            assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "hub"
            assert get_blob_store() is store
    finally:
        get_blob_store.cache_clear()


def test_presigned_urls_use_the_public_endpoint(s3_bucket, monkeypatch):
    from pefthub_server.registry.storage import storage_from_url

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    store = storage_from_url(f"s3://{bucket}/p", secret="x", s3_public_endpoint="http://s3.example.test:9000")
    sha = "ab" * 32
    assert store.download_url(sha, base_url="").startswith(f"http://s3.example.test:9000/{bucket}/p/blobs/sha256/ab/ab/")
    assert store.upload_target(sha, 3, user_id=1, base_url="")["url"].startswith("http://s3.example.test:9000/")
    assert store.client.meta.endpoint_url == endpoint
