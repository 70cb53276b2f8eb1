"""``hub.pull`` against the real hub, through the proxy: the cache (blobs, snapshot links, refs),
verified and resumable downloads, and a manifest checked before any byte is written.

The version is a dataset: the hub takes any bytes in one, so the weights-sized file can be
corrupted, cut off or served without Range by the proxy.
"""

from __future__ import annotations

import os
import socket

import pytest

from pefthub import HubConnectionError, IntegrityError, ValidationError

from .proxy import Reply, json_body
from .state import sha, tree

WEIGHTS = bytes(range(256)) * (12 * 1024)  # 3 MiB: several 1 MiB download chunks
FILES = {
    "config.json": b'{"peft_type": "LORA", "r": 8}',
    "train.jsonl": WEIGHTS,
    "tokenizer/vocab.json": b'{"a": 1}',
    "copy/config.json": b'{"peft_type": "LORA", "r": 8}',  # same blob twice
}
WEIGHTS_URL = f"/api/v1/blobs/{sha(WEIGHTS)}"
LATEST = "/api/v1/repos/acme/bot/versions/latest"


@pytest.fixture
def seeded(seed):
    return seed.push("acme/bot", FILES)


def blob_gets(proxy, blob: str = ""):
    return proxy.requests("GET", f"/api/v1/blobs/{blob}")


def cache_files(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file() or p.is_symlink())


def test_pull_builds_blobs_snapshot_links_and_refs(make_hub, seeded, proxy, tmp_path):
    hub = make_hub()
    path = hub.pull("acme/bot")

    digest_hex = seeded.digest_hex
    cache = tmp_path / "cache"
    assert path == cache / "snapshots" / digest_hex
    assert tree(path) == FILES
    for rel, data in FILES.items():
        link = path / rel
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (cache / "blobs" / sha(data)).resolve()
    assert {p.name: p.read_bytes() for p in (cache / "blobs").iterdir()} == {sha(d): d for d in FILES.values()}
    assert (path / ".complete").is_file()
    assert (cache / "refs" / "acme" / "bot" / "latest").read_text().strip() == digest_hex
    assert (cache / "refs" / "acme" / "bot" / "1").read_text().strip() == digest_hex
    assert not [p for p in cache_files(cache) if p.endswith(".incomplete")]
    # the shared blob was fetched once
    assert len(blob_gets(proxy)) == 3


def test_second_pull_is_one_api_request_and_no_blob_request(make_hub, seeded, proxy):
    hub = make_hub()
    first = hub.pull("acme/bot")
    before = len(proxy.requests())
    assert hub.pull("acme/bot") == first
    new = proxy.requests()[before:]
    assert [(s.method, s.path) for s in new] == [("GET", "/api/v1/repos/acme/bot/versions/latest")]


def test_digest_pinned_cached_pull_makes_no_request_at_all(make_hub, seeded, proxy, tmp_path):
    make_hub().pull("acme/bot@1")
    before = len(proxy.requests())
    with socket.socket() as s:  # even with the hub gone
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    hub = make_hub(url=dead, max_retries=0)

    path = hub.pull(f"acme/bot@{seeded.digest}")

    assert len(proxy.requests()) == before
    assert tree(path) == FILES
    local = hub.pull(f"acme/bot@{seeded.digest}", local_dir=tmp_path / "here")
    assert local == tmp_path / "here" and tree(local) == FILES
    assert not any(p.is_symlink() for p in local.rglob("*"))
    assert not (local / ".complete").exists()


def test_digest_pinned_uncached_pull_asks_the_server(make_hub, seeded, proxy):
    path = make_hub().pull(f"acme/bot@{seeded.digest}")
    assert tree(path) == FILES
    assert proxy.requests("GET", "/api/v1/")[0].path == f"/api/v1/repos/acme/bot/versions/{seeded.digest}"


def test_pull_local_dir_copies_real_files(make_hub, seeded, tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"keep me")
    os.symlink(outside, target / "config.json")  # a pre-existing link is replaced, not written through

    assert make_hub().pull("acme/bot", local_dir=target) == target
    assert tree(target) == FILES
    assert not (target / "config.json").is_symlink()
    assert outside.read_bytes() == b"keep me"


def test_corrupted_download_raises_and_leaves_no_blob(make_hub, seeded, proxy, tmp_path):
    bad = bytearray(WEIGHTS)
    bad[12345] ^= 0xFF
    proxy.rewrite("GET", WEIGHTS_URL, lambda body: bytes(bad))

    with pytest.raises(IntegrityError) as info:
        make_hub().pull("acme/bot")

    assert info.value.detail["actual_sha256"] == sha(bytes(bad))
    blobs = tmp_path / "cache" / "blobs"
    assert not (blobs / sha(WEIGHTS)).exists()
    assert not (blobs / f"{sha(WEIGHTS)}.incomplete").exists()
    assert not list((tmp_path / "cache").glob("snapshots/*/.complete"))


def test_oversized_download_is_an_integrity_error(make_hub, seeded, proxy, tmp_path):
    proxy.rewrite("GET", WEIGHTS_URL, lambda body: body + b"extra")
    with pytest.raises(IntegrityError):
        make_hub().pull("acme/bot")
    assert not (tmp_path / "cache" / "blobs" / sha(WEIGHTS)).exists()


def test_partial_download_resumes_with_range(make_hub, seeded, proxy, tmp_path):
    blobs = tmp_path / "cache" / "blobs"
    blobs.mkdir(parents=True)
    have = 1_000_003
    (blobs / f"{sha(WEIGHTS)}.incomplete").write_bytes(WEIGHTS[:have])

    make_hub().pull("acme/bot")

    [get] = blob_gets(proxy, sha(WEIGHTS))
    assert get.header("Range") == f"bytes={have}-" and get.status == 206
    assert (blobs / sha(WEIGHTS)).read_bytes() == WEIGHTS
    assert not (blobs / f"{sha(WEIGHTS)}.incomplete").exists()


def test_server_ignoring_range_restarts_from_zero(make_hub, seeded, proxy, tmp_path):
    proxy.drop_header("GET", WEIGHTS_URL, "Range")
    blobs = tmp_path / "cache" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha(WEIGHTS)}.incomplete").write_bytes(WEIGHTS[:5000])

    make_hub().pull("acme/bot")

    [get] = blob_gets(proxy, sha(WEIGHTS))
    assert get.header("Range") == "bytes=5000-" and get.status == 200  # asked; got a 200 with everything
    assert (blobs / sha(WEIGHTS)).read_bytes() == WEIGHTS


def test_corrupt_partial_is_discarded_and_fetched_again(make_hub, seeded, proxy, tmp_path):
    blobs = tmp_path / "cache" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{sha(WEIGHTS)}.incomplete").write_bytes(b"\xff" * 4096)  # not a prefix of the blob

    make_hub().pull("acme/bot")

    gets = [s.header("Range") for s in blob_gets(proxy, sha(WEIGHTS))]
    assert gets == ["bytes=4096-", None]
    assert (blobs / sha(WEIGHTS)).read_bytes() == WEIGHTS


def test_interrupted_stream_resumes_where_it_stopped(make_hub, seeded, proxy, tmp_path, sleeps):
    proxy.cut("GET", WEIGHTS_URL, 1_500_000)

    make_hub().pull("acme/bot")

    ranges = [s.header("Range") for s in blob_gets(proxy, sha(WEIGHTS))]
    assert ranges[0] is None
    assert ranges[1] is not None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_500_000
    assert (tmp_path / "cache" / "blobs" / sha(WEIGHTS)).read_bytes() == WEIGHTS
    assert len(sleeps) == 1


def test_download_retries_5xx_on_the_blob_url(make_hub, seeded, proxy, sleeps):
    proxy.reply("GET", r"/api/v1/blobs/[0-9a-f]{64}", Reply(503, b"busy", {"Retry-After": "0"}))
    assert tree(make_hub().pull("acme/bot")) == FILES
    assert sleeps == [0.0]


def test_blob_urls_get_no_token(make_hub, seeded, proxy):
    make_hub().pull("acme/bot")
    gets = blob_gets(proxy)
    assert gets and all(s.header("Authorization") is None for s in gets)
    assert all(s.header("Accept-Encoding") == "identity" for s in gets)


@pytest.mark.parametrize("bad", ["../evil.json", "/etc/evil", "a\\evil", "sub/../../evil", ".complete"])
def test_unsafe_manifest_path_fails_before_writing_anything(make_hub, seeded, proxy, tmp_path, bad):
    def add_bad_path(version):
        good = version["files"][0]
        version["files"].append({**good, "path": bad})

    proxy.rewrite("GET", LATEST, json_body(add_bad_path))

    with pytest.raises(ValidationError, match="refusing manifest path"):
        make_hub().pull("acme/bot")

    assert blob_gets(proxy) == []
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "evil.json").exists()


def test_manifest_not_matching_its_digest_is_refused(make_hub, seeded, proxy, tmp_path):
    def grow_a_file(version):
        version["files"][0]["size"] += 1

    proxy.rewrite("GET", LATEST, json_body(grow_a_file))
    with pytest.raises(IntegrityError, match="does not hash to its digest"):
        make_hub().pull("acme/bot")
    assert blob_gets(proxy) == []


def test_hardlink_or_copy_when_symlinks_are_unavailable(make_hub, seeded, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    path = make_hub().pull("acme/bot")
    assert tree(path) == FILES
    assert not any(p.is_symlink() for p in path.rglob("*"))


def test_unreachable_hub_falls_back_to_the_cached_ref(make_hub, seeded, tmp_path):
    path = make_hub().pull("acme/bot@latest")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.warns(UserWarning, match="unreachable"):
        assert make_hub(url=dead, max_retries=0).pull("acme/bot") == path
    with pytest.raises(HubConnectionError):
        make_hub(url=dead, max_retries=0).pull("acme/other")


def test_pull_of_a_new_version_moves_the_ref(make_hub, seeded, seed, tmp_path):
    hub = make_hub()
    first = hub.pull("acme/bot")
    seed.push("acme/bot", {**FILES, "config.json": b'{"r": 16}'})
    second = hub.pull("acme/bot")
    assert second != first and (second / "config.json").read_bytes() == b'{"r": 16}'
    assert tree(first) == FILES  # the old snapshot is untouched
    assert (tmp_path / "cache" / "refs" / "acme" / "bot" / "latest").read_text().strip() == second.name


def test_pull_with_progress_bars_through_an_interruption(make_hub, seeded, proxy, capsys):
    proxy.cut("GET", WEIGHTS_URL, 700_000)
    path = make_hub(progress=True).pull("acme/bot")
    assert tree(path) == FILES
    assert "pulling acme/bot@1" in capsys.readouterr().err
