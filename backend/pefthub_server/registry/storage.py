"""Blob storage: content-addressed bytes on a local directory or on S3.

Keys are made here from the sha256 (``blobs/sha256/ab/cd/<hex>``); no user-supplied
path ever reaches the filesystem or a bucket. Every write is verified (size and
sha256) before the blob becomes visible, so a key never holds bytes that do not hash
to its name, and only the server writes a blob's key: a client's upload is bound to
its user (a signed local PUT, or an S3 staging key of its own) and becomes the blob
once verified. Services pick the backend with :func:`get_blob_store`.
"""

from __future__ import annotations

import abc
import base64
import errno
import functools
import hashlib
import hmac
import io
import os
import re
import tempfile
import time
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from pefthub.protocol.refs import is_sha256
from pefthub_server.core.errors import HubError, NotFound, ValidationFailed
from pefthub_server.registry.presign import GetPresigner

CHUNK = 1024 * 1024
SPOOL_MAX = 8 * 1024 * 1024
#: what a filesystem says when it has no room left (space, or the user's quota)
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


#: the ``purpose`` of a local upload URL handed out for a job checkpoint
CHECKPOINT = "checkpoint"


def upload_signer(user_id: int | str, checkpoint: bool) -> str:
    """What a local upload URL's signature binds: its user, and whether it is a checkpoint's."""
    return f"{user_id}:{CHECKPOINT}" if checkpoint else str(user_id)


def blob_key(sha256: str) -> str:
    """The storage key of a blob; refuses anything but 64 lowercase hex digits."""
    if not is_sha256(sha256):
        raise ValidationFailed(f"`{str(sha256)[:80]}` is not a sha256 digest; expected 64 lowercase hex digits",
                               code="invalid_digest")
    return f"blobs/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _valid(sha256: str) -> str:
    blob_key(sha256)
    return sha256


def _b64(sha256: str) -> str:
    """The digest as S3's ``ChecksumSHA256`` writes it."""
    return base64.b64encode(bytes.fromhex(_valid(sha256))).decode()


def _mismatch(code: str, sha256: str, expected: object, got: object, what: str) -> ValidationFailed:
    return ValidationFailed(f"blob {sha256}: expected {what} {expected}, got {got}", code=code,
                            detail={"sha256": sha256, "expected": expected, "got": got})


def missing_blob(sha256: str) -> ValidationFailed:
    """What a push citing a blob it may not use gets: the same words whether or not the hub
    holds those bytes for someone else, so the answer reveals nothing."""
    return ValidationFailed(
        f"blob {sha256} is neither in a version you can read nor uploaded by you; upload it "
        "(POST …/uploads says where), then commit again", code="missing_blob", detail={"sha256": sha256})


def _not_found(sha256: str) -> NotFound:
    return NotFound(f"blob {sha256} is not in storage", code="blob_not_found")


@contextmanager
def _room_needed():
    """A full disk (or quota) is the operator's to fix: a 507 that says so, not a crash."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise HubError("The hub's blob storage is full; ask the operator to free space, then push again.",
                           code="insufficient_storage", status=507) from exc
        raise


def _drain(stream: IO[bytes], sink: IO[bytes] | None, sha256: str, expected_size: int | None) -> int:
    """Copy ``stream`` into ``sink`` (or nowhere) while hashing; raise on a bad size or digest."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if expected_size is not None and size > expected_size:
            # Stop early: a body longer than announced must not fill the disk.
            raise _mismatch("size_mismatch", sha256, expected_size, f"more than {expected_size}", "size")
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    if expected_size is not None and size != expected_size:
        raise _mismatch("size_mismatch", sha256, expected_size, size, "size")
    if digest.hexdigest() != sha256:
        raise _mismatch("digest_mismatch", sha256, sha256, digest.hexdigest(), "sha256")
    return size


def _content_disposition(filename: str) -> str:
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


class BlobStore(abc.ABC):
    """One backend for content-addressed blobs; every method takes the blob's sha256."""

    serves_bytes: bool
    upload_expires: int = 3600

    @abc.abstractmethod
    def stat(self, sha256: str) -> int | None:
        """The blob's size in bytes, or ``None`` when it is not stored."""

    @abc.abstractmethod
    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` (fewer at the end); ``NotFound`` if absent."""

    @abc.abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """A readable stream of the whole blob, closed by the caller; ``NotFound`` if absent."""

    @abc.abstractmethod
    def save_stream(self, sha256: str, stream: IO[bytes], expected_size: int | None) -> int:
        """Store ``stream`` once it is verified and return its size; ``size_mismatch`` or
        ``digest_mismatch`` leave nothing behind. A present blob is kept (the stream is
        still read and verified)."""

    def save_bytes(self, sha256: str, data: bytes) -> None:
        """Store bytes the server made itself (e.g. a rewritten config), verified."""
        self.save_stream(sha256, io.BytesIO(data), len(data))

    @abc.abstractmethod
    def accept_upload(self, sha256: str, size: int, *, user_id: int, checkpoint: bool = False) -> bool:
        """Make what user ``user_id`` sent to its :meth:`upload_target` (of the same ``checkpoint``) the blob, once verified.

        False when that user has no such upload waiting (the caller answers ``missing_blob``);
        ``size_mismatch`` or ``digest_mismatch`` when it does not match, the upload then discarded.
        """

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob; no error when it is absent."""

    @abc.abstractmethod
    def upload_target(self, sha256: str, size: int, *, user_id: int, base_url: str,
                      headerless: bool = False, checkpoint: bool = False) -> dict[str, Any]:
        """Where user ``user_id`` sends the bytes: ``{"method": "PUT", "url": ..., "headers": {...}}``.

        The target is that user's alone: bytes sent there count as that user's upload only.
        ``checkpoint``: a job checkpoint's upload, a target of its own, which proves nothing to a push.
        ``headerless``: a target that takes a PUT with no header at all (Git LFS's basic
        transfer, as huggingface_hub sends it, carries none), checked by :meth:`accept_upload`.
        """

    @abc.abstractmethod
    def purge_stale_uploads(self, *, before: datetime, dry_run: bool = False) -> tuple[int, int]:
        """Delete partial or never-accepted uploads last written before ``before``: (count, bytes)."""

    @abc.abstractmethod
    def download_url(self, sha256: str, *, base_url: str, filename: str | None = None, expires: int = 3600) -> str:
        """A URL that serves the blob without an ``Authorization`` header until it expires."""


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root``; the API serves and receives their bytes via signed URLs.

    An upload is verified while it streams into ``root/tmp`` and then renamed into place:
    the signed PUT is the verified upload, and nothing waits for :meth:`accept_upload`.
    """

    serves_bytes = True

    def __init__(self, root: Path, *, secret: str):
        if not secret:
            raise ValueError("LocalBlobStore needs a non-empty secret to sign blob URLs")
        self.root = Path(root).resolve()
        self._secret = secret.encode()

    def path(self, sha256: str) -> Path:
        """The file holding the blob (it may not exist)."""
        return self.root / blob_key(sha256)

    def stat(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise _not_found(sha256) from None

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        with self.open(sha256) as f:
            f.seek(start)
            return f.read(max(length, 0))

    def save_stream(self, sha256: str, stream: IO[bytes], expected_size: int | None) -> int:
        final = self.path(sha256)
        if final.exists():
            return _drain(stream, None, sha256, expected_size)
        with _room_needed():
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{sha256[:16]}-")
            try:
                with os.fdopen(fd, "wb") as f:
                    size = _drain(stream, f, sha256, expected_size)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp_name, 0o644)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, final)  # atomic: readers see no file or the whole, verified one
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
        return size

    def accept_upload(self, sha256: str, size: int, *, user_id: int, checkpoint: bool = False) -> bool:
        return False  # the signed PUT verified and stored the bytes, and recorded who sent them

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def purge_stale_uploads(self, *, before: datetime, dry_run: bool = False) -> tuple[int, int]:
        """Temp files of uploads that died mid-stream (a killed server, a power cut)."""
        count = freed = 0
        tmp = self.root / "tmp"
        for entry in tmp.iterdir() if tmp.is_dir() else ():
            try:
                stat = entry.lstat()
                if not entry.is_file() or stat.st_mtime >= before.timestamp():
                    continue
                if not dry_run:
                    entry.unlink()
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
            count, freed = count + 1, freed + stat.st_size
        return count, freed

    def sign(self, sha256: str, method: str, expires: int, user: str = "") -> str:
        """HMAC-SHA256 (hex) over ``method\\nsha256\\nexpires\\nuser``; HEAD signs as GET.

        ``user`` (an upload's user id) binds a PUT to the user it was handed to.
        """
        method = "GET" if method.upper() == "HEAD" else method.upper()
        return hmac.new(self._secret, f"{method}\n{sha256}\n{expires}\n{user}".encode(), hashlib.sha256).hexdigest()

    def check_signature(self, sha256: str, method: str, expires: str | None, sig: str | None, user: str = "") -> bool:
        """True when ``sig`` signs this digest, method and user and ``expires`` is in the future."""
        try:
            expires_at = int(expires or "")
        except ValueError:
            return False
        if not sig or not sig.isascii() or not is_sha256(sha256) or expires_at < time.time():
            return False  # compare_digest raises on a str that is not ASCII
        return hmac.compare_digest(self.sign(sha256, method, expires_at, user), sig)

    def _signed_url(self, sha256: str, method: str, base_url: str, expires: int, *, user: str = "",
                    checkpoint: bool = False, **extra: str) -> str:
        expires_at = int(time.time()) + expires
        signer = upload_signer(user, checkpoint) if user else ""
        query = {"expires": str(expires_at), **({"user": user} if user else {}),
                 **({"purpose": CHECKPOINT} if checkpoint else {}),
                 "sig": self.sign(_valid(sha256), method, expires_at, signer), **extra}
        return f"{base_url.rstrip('/')}/api/v1/blobs/{sha256}?{urlencode(query)}"

    def upload_target(self, sha256: str, size: int, *, user_id: int, base_url: str,
                      headerless: bool = False, checkpoint: bool = False) -> dict[str, Any]:
        url = self._signed_url(sha256, "PUT", base_url, self.upload_expires, user=str(user_id), checkpoint=checkpoint)
        # Verified as it streams: no header is needed, the content type is only a courtesy.
        return {"method": "PUT", "url": url, "headers": {} if headerless else {"Content-Type": "application/octet-stream"}}

    def download_url(self, sha256: str, *, base_url: str, filename: str | None = None, expires: int = 3600) -> str:
        # `filename` only names the download (Content-Disposition); it is not signed.
        return self._signed_url(sha256, "GET", base_url, expires, **({"filename": filename} if filename else {}))


class S3BlobStore(BlobStore):
    """Blobs as objects in an S3 (or S3-compatible) bucket; clients use presigned URLs.

    A client's presigned PUT goes to a staging key of its user's own
    (``<prefix>uploads/<user id>/<sha256>``), never to a blob's key: at commit
    :meth:`accept_upload` verifies it and copies it into place server-side.
    """

    serves_bytes = False
    # Above this size save_stream sends a multipart upload, reading one `part_size`
    # part at a time (a single PUT is capped at 5 GiB and restarts from zero on retry).
    multipart_threshold = 1024 * 1024 * 1024
    part_size = 16 * 1024 * 1024
    # S3's limit for one CopyObject (larger objects copy in parts)
    single_copy_max = 5 * 1024**3
    # AWS S3 checks an x-amz-checksum-sha256 against the body before storing it, so verify()
    # may trust a stored full-object ChecksumSHA256. Turn off for stores that keep a client's
    # claim unchecked (moto does).
    trust_checksums = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 public_endpoint_url: str | None = None, client_kwargs: dict[str, Any] | None = None):
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        kwargs = dict(client_kwargs or {})
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"mode": "standard"})
        kwargs["config"] = config.merge(kwargs["config"]) if kwargs.get("config") else config
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        # A session of its own: creating clients from boto3's default session is not thread-safe.
        session = boto3.session.Session()
        self.client = session.client("s3", **kwargs)
        # URLs handed to clients may need another host than the server uses (MinIO inside a
        # compose network, reached from outside as http://localhost:9000).
        self.presigner = (
            session.client("s3", **{**kwargs, "endpoint_url": public_endpoint_url}) if public_endpoint_url else self.client
        )
        # Download URLs are signed without botocore's per-call machinery, once proven to be botocore's own.
        self.get_presigner = GetPresigner(self.presigner, bucket)

    def key(self, sha256: str) -> str:
        return self.prefix + blob_key(sha256)

    def staging_key(self, sha256: str, user_id: int, checkpoint: bool = False) -> str:
        """Where user ``user_id`` uploads the bytes of ``sha256``: its own key, not the blob's (a checkpoint's apart)."""
        return f"{self.prefix}uploads/{int(user_id)}/{'checkpoints/' if checkpoint else ''}{_valid(sha256)}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (set-up commands and tests; never implicit)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_404(exc):
                raise
        region = self.client.meta.region_name
        if region in (None, "us-east-1", "aws-global"):
            self.client.create_bucket(Bucket=self.bucket)
        else:
            self.client.create_bucket(Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": region})

    def _object(self, operation: str, key: str, **extra: Any) -> dict[str, Any] | None:
        """``head_object``/``get_object`` on ``key``; ``None`` when it is absent."""
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            if _is_404(exc):
                return None
            raise

    def _body(self, sha256: str, key: str | None = None, **extra: Any) -> Any:
        resp = self._object("get_object", key or self.key(sha256), **extra)
        if resp is None:
            raise _not_found(sha256)
        return resp["Body"]

    def stat(self, sha256: str) -> int | None:
        head = self._object("head_object", self.key(sha256))
        return None if head is None else int(head["ContentLength"])

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            body = self._body(sha256, Range=f"bytes={start}-{start + length - 1}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # start is past the end
            raise
        with closing(body):
            return body.read()

    def open(self, sha256: str) -> BinaryIO:
        return cast(BinaryIO, self._body(sha256))

    def save_stream(self, sha256: str, stream: IO[bytes], expected_size: int | None) -> int:
        if self.stat(sha256) is not None:
            return _drain(stream, None, sha256, expected_size)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX) as spool:
            size = _drain(stream, spool, sha256, expected_size)
            spool.seek(0)
            if size > self.multipart_threshold:
                self._multipart_upload(self.key(sha256), spool)
            else:
                # S3 checks the body against ChecksumSHA256 and keeps it for verify().
                self.client.put_object(Bucket=self.bucket, Key=self.key(sha256), Body=spool, ContentLength=size,
                                       ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256))
        return size

    def _multipart_upload(self, key: str, spool: IO[bytes]) -> None:
        upload = {"Bucket": self.bucket, "Key": key}
        upload["UploadId"] = self.client.create_multipart_upload(**upload, ChecksumAlgorithm="SHA256")["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            while part := spool.read(self.part_size):
                checksum = base64.b64encode(hashlib.sha256(part).digest()).decode()
                resp = self.client.upload_part(**upload, PartNumber=len(parts) + 1, Body=part, ChecksumSHA256=checksum)
                parts.append({"PartNumber": len(parts) + 1, "ETag": resp["ETag"], "ChecksumSHA256": checksum})
            self.client.complete_multipart_upload(**upload, MultipartUpload={"Parts": parts})
        except BaseException:
            self.client.abort_multipart_upload(**upload)
            raise

    def accept_upload(self, sha256: str, size: int, *, user_id: int, checkpoint: bool = False) -> bool:
        staged = self.staging_key(sha256, user_id, checkpoint)
        head = self._object("head_object", staged, ChecksumMode="ENABLED")
        if head is None:
            return False
        got_size = int(head["ContentLength"])
        # A multipart ChecksumSHA256 ("...-N"), none, or distrust means hashing the object.
        trusted = self.trust_checksums and head.get("ChecksumSHA256") == _b64(sha256)
        got = sha256 if trusted or got_size != size else self._hash_object(sha256, staged)
        if got_size != size or got != sha256:
            self.client.delete_object(Bucket=self.bucket, Key=staged)
            if got_size != size:
                raise _mismatch("size_mismatch", sha256, size, got_size, "size")
            raise _mismatch("digest_mismatch", sha256, sha256, got, "sha256")
        if self.stat(sha256) is None:
            source = {"Bucket": self.bucket, "Key": staged}
            if size <= self.single_copy_max:
                # One server-side CopyObject; S3 computes the copy's own ChecksumSHA256. (boto3's managed
                # copy splits into 8 MiB UploadPartCopy calls: 2.4x slower for 64 MiB on moto.)
                self.client.copy_object(CopySource=source, Bucket=self.bucket, Key=self.key(sha256),
                                        ChecksumAlgorithm="SHA256")
            else:  # past S3's 5 GB single-copy limit: multipart
                self.client.copy(source, self.bucket, self.key(sha256))
        self.client.delete_object(Bucket=self.bucket, Key=staged)
        return True

    def purge_stale_uploads(self, *, before: datetime, dry_run: bool = False) -> tuple[int, int]:
        """Staged uploads no commit accepted (the client gave up between its PUT and its commit)."""
        stale = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}uploads/"):
            stale += [(o["Key"], o["Size"]) for o in page.get("Contents", []) if o["LastModified"] < before]
        for start in range(0, 0 if dry_run else len(stale), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": key} for key, _ in stale[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(stale), sum(size for _, size in stale)

    def _hash_object(self, sha256: str, key: str) -> str:
        digest, body = hashlib.sha256(), self._body(sha256, key)
        with closing(body):  # not `with body`: StreamingBody.__enter__ returns the raw stream
            try:
                for chunk in body.iter_chunks(CHUNK):
                    digest.update(chunk)
            except FlexibleChecksumError:
                pass  # botocore found the stored checksum wrong at EOF; our digest has every byte
        return digest.hexdigest()

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def upload_target(self, sha256: str, size: int, *, user_id: int, base_url: str,
                      headerless: bool = False, checkpoint: bool = False) -> dict[str, Any]:
        params = {"Bucket": self.bucket, "Key": self.staging_key(sha256, user_id, checkpoint), "ContentLength": size}
        if headerless:  # a plain PUT, checked by verify()
            url = self.presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=self.upload_expires)
            return {"method": "PUT", "url": url, "headers": {}}
        checksum = _b64(sha256)
        url = self.presigner.generate_presigned_url(
            "put_object", Params={**params, "ChecksumSHA256": checksum}, ExpiresIn=self.upload_expires)
        if "x-amz-checksum-sha256" in parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", [""])[0].split(";"):
            # The header is signed: S3 refuses a body that does not hash to it.
            return {"method": "PUT", "url": url, "headers": {"x-amz-checksum-sha256": checksum}}
        # This botocore cannot sign the checksum header: a plain PUT, checked by verify().
        url = self.presigner.generate_presigned_url("put_object", Params=params, ExpiresIn=self.upload_expires)
        return {"method": "PUT", "url": url, "headers": {}}

    def download_url(self, sha256: str, *, base_url: str, filename: str | None = None, expires: int = 3600) -> str:
        return self.get_presigner.url(self.key(sha256), disposition=_content_disposition(filename) if filename else None,
                                      expires=expires)


def _is_404(exc: ClientError) -> bool:
    """A missing object; a missing bucket (a misconfiguration) is left to propagate where S3 says so."""
    code = exc.response.get("Error", {}).get("Code")
    return code != "NoSuchBucket" and (code in ("404", "NoSuchKey", "NotFound")
                                       or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404)


def storage_from_url(url: str, *, secret: str, s3_public_endpoint: str | None = None) -> BlobStore:
    """The backend named by a ``PEFTHUB_STORAGE`` URL.

    ``file:///abs/path`` or ``file://relative/path`` -> :class:`LocalBlobStore`;
    ``s3://bucket[/prefix]`` -> :class:`S3BlobStore` (endpoint and credentials from the
    usual ``AWS_*`` variables, e.g. ``AWS_ENDPOINT_URL`` for MinIO).
    """
    accepted = "file:///absolute/path, file://relative/path or s3://bucket[/prefix]"
    if url.startswith("file://") and url[len("file://"):]:
        return LocalBlobStore(Path(url[len("file://"):]), secret=secret)
    if url.startswith("s3://") and urlsplit(url).netloc:
        return S3BlobStore(urlsplit(url).netloc, urlsplit(url).path.strip("/"), public_endpoint_url=s3_public_endpoint)
    raise ValueError(f"PEFTHUB_STORAGE={url!r} is not a storage URL this server knows; use {accepted}")


@functools.cache
def get_blob_store() -> BlobStore:
    """The configured backend (cached; tests call ``get_blob_store.cache_clear()``)."""
    from django.conf import settings

    return storage_from_url(
        settings.PEFTHUB_STORAGE, secret=settings.SECRET_KEY, s3_public_endpoint=settings.PEFTHUB_S3_PUBLIC_ENDPOINT or None
    )
