"""alice pushes an adapter trained by peft, bob pulls it and gets the same logits — local and S3."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch

from examples import tiny
from pefthub.errors import NotFound, PermissionDenied
from pefthub_server.registry.models import Version


@pytest.fixture(params=["local", "s3"])
def backend(request):
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    return request.param


def _blob_requests(log, hub_url):
    return [(m, u) for m, u in log if "/api/v1/blobs/" in u or not u.startswith(hub_url)]


def test_push_pull_reproduces_logits(backend, alice, bob, hub_for, tiny_base, tiny_adapter, live_server, http_log):
    adapter_dir, expected = tiny_adapter
    alice_hub = hub_for(alice)
    base = alice_hub.push(tiny_base, "acme/llama-tiny")
    assert base.number == 1 and base.created
    version = alice_hub.push(adapter_dir, "acme/support-bot", base_model="acme/llama-tiny", aliases=["prod"], message="v1")
    assert (version.number, version.created) == (1, True)

    bob_hub = hub_for(bob)
    base_path = bob_hub.pull("acme/llama-tiny")
    adapter_path = bob_hub.pull("acme/support-bot@prod")
    config = json.loads((adapter_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/llama-tiny"
    for name in ("adapter_model.safetensors", "README.md"):
        assert (adapter_path / name).read_bytes() == (adapter_dir / name).read_bytes()
    assert torch.equal(tiny.load_adapter_logits(base_path, adapter_path), expected)

    if backend == "s3":  # bytes went straight to S3: the hub's own blob endpoint was never used
        assert not [u for _, u in http_log if "/api/v1/blobs/" in u]
        assert any(not u.startswith(live_server.url) for _, u in http_log)

    # already cached: one manifest request, no blob request; digest-pinned and cached: no request at all
    http_log.clear()
    assert bob_hub.pull("acme/support-bot@prod") == adapter_path
    assert _blob_requests(http_log, live_server.url) == [] and len(http_log) == 1
    http_log.clear()
    assert bob_hub.pull(f"acme/support-bot@{version.digest}") == adapter_path
    assert http_log == []


def test_repush_uploads_nothing_and_changed_file_uploads_one(alice, hub_for, tiny_base, tiny_adapter, tmp_path, live_server, http_log):
    hub = hub_for(alice)
    hub.push(tiny_base, "acme/llama-tiny")
    folder = tmp_path / "bot"
    shutil.copytree(tiny_adapter[0], folder)
    first = hub.push(folder, "acme/bot", base_model="acme/llama-tiny")
    http_log.clear()
    again = hub.push(folder, "acme/bot", base_model="acme/llama-tiny")
    assert (again.number, again.created) == (first.number, False)
    assert [m for m, u in http_log if m == "PUT"] == []
    (folder / "README.md").write_text("# bot\nbetter card\n")
    http_log.clear()
    third = hub.push(folder, "acme/bot")
    assert (third.number, third.created) == (2, True)
    puts = [u for m, u in http_log if m == "PUT"]
    readme_sha = next(f.sha256 for f in hub.version("acme/bot@2").files if f.path == "README.md")
    assert len(puts) == 1 and readme_sha in puts[0]


def test_twenty_concurrent_pushes_number_1_to_20(alice, hub_for, tmp_path):
    hub_for(alice).create_repo("acme/data", kind="dataset")
    results, errors = [], []

    def push(i):
        path = tmp_path / f"train-{i}.jsonl"
        path.write_text(json.dumps({"text": f"row {i}"}) + "\n")
        try:
            results.append(hub_for(alice).push(path, "acme/data", message=f"push {i}").number)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(1, 21))
    assert sorted(Version.objects.filter(repository__name="data").values_list("number", flat=True)) == list(range(1, 21))


def test_outsider_and_read_token_through_the_sdk(alice, bob, carol, hub_for, tiny_base):
    hub_for(alice).push(tiny_base, "acme/llama-tiny")
    with pytest.raises(NotFound):
        hub_for(carol).pull("acme/llama-tiny")
    with pytest.raises(PermissionDenied):
        hub_for(bob, token=bob.new_token("read")).push(tiny_base, "acme/llama-tiny", message="nope")
