"""The local cache, laid out like huggingface_hub's::

    <cache>/blobs/<sha256>                       file contents, content-addressed
    <cache>/blobs/<sha256>.incomplete            a download in progress (resumable)
    <cache>/snapshots/<digest hex>/<path>        relative symlinks to the blobs
    <cache>/snapshots/<digest hex>/.complete     written last: the snapshot is whole
    <cache>/refs/<ns>/<name>/<revision>          digest last resolved for that ref

A blob only ever appears under its final name after its bytes were hashed while
streaming and matched the manifest's sha256 and size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import requests

from . import constants as c
from ._http import HTTPClient
from .errors import HubConnectionError, HubError, IntegrityError, ValidationError
from .models import FileEntry
from .protocol.errors import PathError, ProtocolError
from .protocol.manifest import parse_manifest
from .protocol.refs import is_sha256
from .refs import Ref

#: written in every snapshot folder once it is whole; no file may take its name
COMPLETE_MARKER = ".complete"

try:  # POSIX: serialise concurrent downloads of one blob across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def check_sha256(value: str) -> str:
    """A manifest's sha256 becomes a file name: it must be exactly 64 lowercase hex digits."""
    if not is_sha256(value):
        raise ValidationError(f"refusing manifest entry with sha256 {value!r}: not 64 hex digits")
    return value


def check_manifest(files: Iterable[FileEntry]) -> list[FileEntry]:
    """Validate every path and hash (the protocol's manifest rules) before anything is written."""
    files = list(files)
    try:
        parse_manifest([{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files])
    except PathError as exc:
        raise ValidationError(f"refusing manifest path: {exc.message}", code=exc.code, detail=exc.detail) from None
    except ProtocolError as exc:
        raise ValidationError(f"refusing manifest: {exc.message}", code=exc.code, detail=exc.detail) from None
    if any(f.path == COMPLETE_MARKER for f in files):
        raise ValidationError(f"refusing manifest path {COMPLETE_MARKER!r}: the cache uses that name", code="invalid_path")
    return files


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Cache:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / check_sha256(sha256)

    def snapshot_dir(self, digest_hex: str) -> Path:
        return self.root / "snapshots" / check_sha256(digest_hex)

    def ref_path(self, ref: Ref) -> Path:
        return self.root / "refs" / ref.namespace / ref.name / ref.revision

    # -- state ----------------------------------------------------------------
    def is_complete(self, digest_hex: str) -> bool:
        return (self.snapshot_dir(digest_hex) / COMPLETE_MARKER).is_file()

    def has_blob(self, entry: FileEntry) -> bool:
        try:
            return self.blob_path(entry.sha256).stat().st_size == entry.size
        except FileNotFoundError:
            return False

    def read_ref(self, ref: Ref) -> str | None:
        try:
            value = self.ref_path(ref).read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return value if is_sha256(value) else None

    def write_ref(self, ref: Ref, digest_hex: str) -> None:
        if ref.is_digest:
            return  # the snapshot folder itself is the record
        _atomic_write(self.ref_path(ref), check_sha256(digest_hex) + "\n")

    # -- snapshots ------------------------------------------------------------
    def build_snapshot(self, digest_hex: str, files: Iterable[FileEntry]) -> Path:
        """Link every file of a version to its blob, then write the marker."""
        snapshot = self.snapshot_dir(digest_hex)
        for entry in files:
            target = snapshot / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(self.blob_path(entry.sha256), target)
        _atomic_write(snapshot / COMPLETE_MARKER, f"sha256:{digest_hex}\n")
        return snapshot

    def export(self, digest_hex: str, local_dir: Path) -> Path:
        """Copy a complete snapshot's files (not links) into ``local_dir``."""
        snapshot = self.snapshot_dir(digest_hex)
        local_dir.mkdir(parents=True, exist_ok=True)
        for folder, _dirs, names in os.walk(snapshot):
            rel = Path(folder).relative_to(snapshot)
            for name in names:
                if rel == Path(".") and name == COMPLETE_MARKER:
                    continue
                target = local_dir / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                # Never write through a link the folder already holds.
                if target.is_symlink() or target.is_file():
                    target.unlink()
                shutil.copyfile(Path(folder) / name, target)
        return local_dir

    # -- downloads ------------------------------------------------------------
    def download(
        self,
        http: HTTPClient,
        entry: FileEntry,
        *,
        on_bytes: Callable[[int], object] | None = None,
    ) -> Path:
        """Fetch one blob into the cache, resuming a partial download, verified."""
        dest = self.blob_path(entry.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".locks" / f"{entry.sha256}.lock"):
            if self.has_blob(entry):  # another process finished it meanwhile
                if on_bytes is not None:
                    on_bytes(entry.size)
                return dest
            if not entry.url:
                raise HubError(f"the manifest gives no download URL for {entry.path!r}")
            _fetch_verified(
                http, http.absolute(entry.url), entry, dest, on_bytes or (lambda n: None)
            )
        return dest


def _fetch_verified(
    http: HTTPClient,
    url: str,
    entry: FileEntry,
    dest: Path,
    on_bytes: Callable[[int], object],
) -> None:
    tmp = dest.with_name(dest.name + ".incomplete")
    failures = 0
    restarted_after_mismatch = False
    counted = 0  # bytes of this blob the progress bar shows now

    def count(n: int) -> None:
        nonlocal counted
        counted += n
        on_bytes(n)

    while True:
        count(-counted)
        have = tmp.stat().st_size if tmp.exists() else 0
        if have > entry.size:
            tmp.unlink()
            have = 0
        resumed = have > 0
        hasher = _hash_prefix(tmp, have)
        count(have)
        try:
            if have < entry.size:
                have, hasher = _stream_into(http, url, tmp, have, hasher, entry, count)
        except _Interrupted as exc:
            failures += 1
            if failures > http.max_retries:
                count(-counted)
                raise HubConnectionError(
                    f"download of {entry.path!r} kept failing after {failures} attempt(s): {exc}"
                ) from exc.__cause__
            http.pause(failures - 1)
            continue
        if have == entry.size and hasher.hexdigest() == entry.sha256:
            os.replace(tmp, dest)
            return
        actual = hasher.hexdigest()
        tmp.unlink(missing_ok=True)
        if resumed and not restarted_after_mismatch:
            # The old partial may be what is corrupt: start once from scratch.
            restarted_after_mismatch = True
            continue
        count(-counted)
        raise IntegrityError(
            f"downloaded {entry.path!r} does not match its manifest: expected sha256 "
            f"{entry.sha256} and {entry.size} bytes, got sha256 {actual} and {have} bytes",
            code="digest_mismatch",
            detail={"path": entry.path, "expected_sha256": entry.sha256, "actual_sha256": actual,
                    "expected_size": entry.size, "actual_size": have},
        )


class _Interrupted(Exception):
    """The transfer broke off; the partial file stays for the next attempt."""


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    hasher = hashlib.sha256()
    if length:
        with open(path, "rb") as fh:
            while chunk := fh.read(c.HASH_CHUNK_SIZE):
                hasher.update(chunk)
    return hasher


def _stream_into(
    http: HTTPClient,
    url: str,
    tmp: Path,
    have: int,
    hasher: hashlib._Hash,
    entry: FileEntry,
    on_bytes: Callable[[int], object],
) -> tuple[int, hashlib._Hash]:
    # identity: Range offsets and the sha256 are about the stored bytes, never a
    # compressed rendition of them.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = http.request("GET", url, headers=headers, stream=True)
    except HubError as exc:
        if exc.status == 416 and have:
            tmp.unlink(missing_ok=True)  # our partial is no prefix of the blob
            raise _Interrupted("server refused the range; restarting") from exc
        raise
    with response:
        if have and response.status_code == 206 and _range_start(response) == have:
            mode = "ab"
        elif response.status_code == 200:
            if have:  # the server ignored Range: start again from byte 0
                on_bytes(-have)
                have, hasher = 0, hashlib.sha256()
            mode = "wb"
        else:
            tmp.unlink(missing_ok=True)
            raise _Interrupted(f"unexpected HTTP {response.status_code} for a download")
        try:
            with open(tmp, mode) as fh, _background_hasher(hasher) as hash_later:
                for chunk in response.iter_content(chunk_size=c.DOWNLOAD_CHUNK_SIZE):
                    if not chunk:
                        continue
                    too_long = have + len(chunk) > entry.size
                    # Past the declared size, keep one extra byte (so the size check fails) and stop.
                    data = chunk[: entry.size - have + 1] if too_long else chunk
                    fh.write(data)
                    hash_later(data)
                    have += len(data)
                    if too_long:
                        break
                    on_bytes(len(data))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Interrupted(str(exc)) from exc
    if have < entry.size:
        raise _Interrupted(f"the server sent {have} of {entry.size} bytes")
    return have, hasher


@contextlib.contextmanager
def _background_hasher(hasher: hashlib._Hash) -> Iterator[Callable[[bytes], None]]:
    """Feed ``hasher`` on a thread so hashing overlaps the network reads.

    hashlib releases the GIL on large buffers; at most ``maxsize`` chunks (8 MiB) wait.
    On exit the hasher has seen every chunk, in order.
    """
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def work() -> None:
        while (chunk := chunks.get()) is not None:
            hasher.update(chunk)

    worker = threading.Thread(target=work, name="pefthub-sha256", daemon=True)
    worker.start()
    try:
        yield chunks.put
    finally:
        chunks.put(None)
        worker.join()


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _link(blob: Path, target: Path) -> None:
    """Put ``target`` in place as a relative symlink to ``blob`` where the OS allows
    it, else a hard link, else a copy; made aside and renamed over, so a
    concurrent pull never sees a half-made entry."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, target.parent), tmp)
    except (OSError, NotImplementedError):
        try:
            os.link(blob, tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
    os.replace(tmp, target)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
