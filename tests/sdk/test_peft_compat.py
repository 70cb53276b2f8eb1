"""``hub.pull(ref, peft_version=...)``: a pulled adapter config a newer peft wrote, adjusted for an older one.

The table and the key filter are tested in tests/protocol/test_peft_compat.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from pefthub import ValidationError, peft_compat
from pefthub.cli import main
from pefthub.peft_compat import PeftCompatError, PeftCompatWarning, drop_unknown_keys

from .state import sha, tree

REPO_ROOT = Path(__file__).resolve().parents[2]


# -- hub.pull(ref, peft_version=...) ------------------------------------------------------------
@pytest.fixture
def adapter_files(seed, lora_config_json) -> dict[str, bytes]:
    """The tiny LoRA with the config the installed peft writes (naming the hub's base, so the hub keeps it as pushed)."""
    seed.base()
    config = dict(lora_config_json, base_model_name_or_path="acme/llama-tiny")
    return {**seed.adapter_files(), "adapter_config.json": json.dumps(config, indent=2).encode(), "README.md": b"# bot\n"}


@pytest.fixture
def push_adapter(seed, adapter_files):
    return lambda: seed.push("acme/bot", adapter_files, kind="adapter", base_model="acme/llama-tiny")


def test_pull_with_peft_version_hands_out_an_adjusted_copy_and_leaves_the_cache_alone(make_hub, push_adapter, proxy,
                                                                                      adapter_files):
    v = push_adapter()
    hub = make_hub()
    with pytest.warns(PeftCompatWarning) as caught:
        path = hub.pull("acme/bot", peft_version="0.13")
    [warning] = caught
    text = str(warning.message)
    assert warning.filename == __file__  # points at the caller's line
    assert text.startswith("acme/bot@1: dropped from adapter_config.json the keys peft 0.13.0 does not know:")
    assert "lora_bias (peft 0.14.0)" in text and "use_dora" not in text

    digest_hex = v.digest_hex
    snapshot = hub.cache.snapshot_dir(digest_hex)
    assert path == hub.cache.root / "compat" / f"{digest_hex}-peft0.13.0"
    files = tree(path)
    assert set(files) == set(adapter_files)
    config = json.loads(files["adapter_config.json"])
    assert set(config) <= peft_compat.known_fields("LORA", "0.13.0") and config["base_model_name_or_path"] == "acme/llama-tiny"
    # the other files are the cached blobs themselves, not copies
    weights = path / "adapter_model.safetensors"
    assert weights.resolve() == hub.cache.blob_path(sha(adapter_files["adapter_model.safetensors"]))
    # the cache is untouched: snapshot and blob still hold the pushed config
    assert tree(snapshot) == adapter_files
    blob = hub.cache.blob_path(sha(adapter_files["adapter_config.json"]))
    assert sha(blob.read_bytes()) == sha(adapter_files["adapter_config.json"])

    # a second pull reuses both, downloads nothing, and warns again
    gets = len(proxy.requests("GET", "/api/v1/blobs/"))
    with pytest.warns(PeftCompatWarning):
        assert hub.pull(f"acme/bot@{v.digest}", peft_version="0.13.0") == path
    assert len(proxy.requests("GET", "/api/v1/blobs/")) == gets
    # without peft_version, or for a peft that knows every key, the plain snapshot
    assert hub.pull("acme/bot") == snapshot
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.pull("acme/bot", peft_version="0.99") == snapshot


def test_pull_with_peft_version_into_a_local_dir(make_hub, push_adapter, adapter_files, tmp_path):
    push_adapter()
    with pytest.warns(PeftCompatWarning):
        out = make_hub().pull("acme/bot", local_dir=tmp_path / "copy", peft_version="0.13")
    files = tree(out)
    assert not (out / "adapter_config.json").is_symlink()
    assert set(json.loads(files["adapter_config.json"])) <= peft_compat.known_fields("LORA", "0.13.0")
    assert files["adapter_model.safetensors"] == adapter_files["adapter_model.safetensors"]


def test_pull_of_a_model_or_a_current_config_changes_nothing(make_hub, seed):
    seed.base()
    hub = make_hub()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = hub.pull("acme/llama-tiny", peft_version="0.13")
    assert path.parent == hub.cache.root / "snapshots"


def test_pull_refuses_an_unknown_peft_version_before_any_request(make_hub, push_adapter, proxy):
    push_adapter()
    with pytest.raises(PeftCompatError, match=r"0\.10\.0 to") as info:
        make_hub().pull("acme/bot", peft_version="0.8")
    assert isinstance(info.value, ValidationError) and isinstance(info.value, ValueError)
    assert proxy.requests() == []


def test_cli_pull_peft_version_names_the_dropped_keys_on_stderr(capsys, monkeypatch, proxy, alice, push_adapter, tmp_path):
    for name, value in (("PEFTHUB_URL", proxy.url), ("PEFTHUB_TOKEN", alice.token),
                        ("PEFTHUB_CACHE", str(tmp_path / "cache")), ("PEFTHUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(name, value)
    push_adapter()
    code = main(["pull", "acme/bot", "--peft-version", "0.13"])
    out, err = capsys.readouterr()
    assert code == 0 and Path(out.strip()).name.endswith("-peft0.13.0")
    assert err.startswith("warning: acme/bot@1: dropped from adapter_config.json") and "lora_bias (peft 0.14.0)" in err

    assert main(["pull", "acme/bot", "--peft-version", "0.8"]) == 2  # a usage error, refused by argparse
    assert "0.10.0 to" in capsys.readouterr().err


# -- a real older peft (opt in) -------------------------------------------------------------------
OLD_PEFT = os.environ.get("PEFTHUB_TEST_OLD_PEFT")  # a folder holding an unpacked peft wheel, e.g. 0.13.2


@pytest.mark.slow
@pytest.mark.skipif(not OLD_PEFT, reason="set PEFTHUB_TEST_OLD_PEFT to a folder with an unpacked older peft wheel")
def test_an_adjusted_config_loads_in_a_real_older_peft_with_the_same_logits(tmp_path):
    """Train with the installed peft, adjust for the old one, load there in a subprocess.

    Needs the old peft's files (``pip download --no-deps peft==0.13.2`` and unzip it);
    it imports next to the installed torch and transformers.
    """
    torch = pytest.importorskip("torch")
    from examples.tiny import make_tiny_llama, train_lora

    old_version = subprocess.run(
        [sys.executable, "-c", "import peft; print(peft.__version__)"], env={**os.environ, "PYTHONPATH": OLD_PEFT},
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    make_tiny_llama(tmp_path / "base")
    torch.save(train_lora(tmp_path / "base", tmp_path / "adapter"), tmp_path / "logits.pt")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    reduced, dropped = drop_unknown_keys(config, old_version)
    assert dropped
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(reduced))
    script = textwrap.dedent(f"""
        import peft, torch
        assert peft.__version__ == {old_version!r}, peft.__file__
        from examples.tiny import load_adapter_logits
        logits = load_adapter_logits({str(tmp_path / 'base')!r}, {str(tmp_path / 'adapter')!r})
        print(float((logits - torch.load({str(tmp_path / 'logits.pt')!r})).abs().max()))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([OLD_PEFT, str(REPO_ROOT)])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout.strip().splitlines()[-1]) == 0.0
