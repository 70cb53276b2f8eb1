"""Adapter configs from a newer peft, adjusted for an older one: the table, the key
filter, and ``hub.pull(ref, peft_version=...)`` on the fake hub.

The table (``pefthub/peft_compat.json``) is generated from the peft wheels by
``sdk/tools/gen_peft_compat.py``; its per-release field lists are the ground truth the
filter is checked against here, and the installed peft is checked against the table.
"""

from __future__ import annotations

import dataclasses
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
from pefthub.peft_compat import NEVER_DROPPED, PeftCompatError, PeftCompatWarning, drop_unknown_keys, resolve_version

from .fakes import TOKEN, sha, tree

TABLE = json.loads((Path(peft_compat.__file__).parent / "peft_compat.json").read_text())
REPO_ROOT = Path(__file__).resolve().parents[2]


def fields_in(peft_type: str, version: str) -> set[str]:
    """The exact constructor fields of ``peft_type``'s config class in that release."""
    return next(set(run["fields"]) for run in TABLE["fields"][peft_type] if version in run["versions"])


@pytest.fixture(scope="module")
def lora_config_json(tmp_path_factory) -> dict:
    """An adapter_config.json as the installed peft writes it."""
    peft = pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("lora")
    peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                    use_dora=True).save_pretrained(out)
    return json.loads((out / "adapter_config.json").read_text())


# -- the table ------------------------------------------------------------------------
def test_table_covers_every_release_from_0_10_and_the_common_methods():
    versions = TABLE["versions"]
    assert versions[0] == "0.10.0" and versions[-1].startswith("0.21.")
    assert {"0.11.1", "0.13.0", "0.13.2", "0.14.0", "0.17.1", "0.20.0"} <= set(versions)
    for peft_type in ("LORA", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "PREFIX_TUNING", "PROMPT_TUNING",
                      "P_TUNING", "ADAPTION_PROMPT", "VERA", "BOFT", "LN_TUNING"):
        assert peft_type in TABLE["types"] and peft_type in TABLE["fields"]
    lora = TABLE["types"]["LORA"]
    # spot checks against peft's changelog
    assert lora["r"] == lora["use_dora"] == lora["base_model_name_or_path"] == "0.10.0"
    assert (lora["layer_replication"], lora["lora_bias"], lora["peft_version"]) == ("0.10.0", "0.14.0", "0.18.0")
    assert "lora_bias" not in fields_in("LORA", "0.13.2") and "lora_bias" in fields_in("LORA", "0.14.0")
    # the base classes' fields reach every type
    for runs in TABLE["fields"].values():
        for run in runs:
            assert {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode"} <= set(run["fields"])
    assert {"num_virtual_tokens", "token_dim"} <= fields_in("PREFIX_TUNING", "0.13.0")


def test_installed_peft_matches_the_table():
    """The generator reads wheels with ast; the installed peft's real dataclasses must agree."""
    peft = pytest.importorskip("peft")
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if peft.__version__ not in TABLE["versions"]:
        pytest.skip(f"peft {peft.__version__} is not in the table: rerun sdk/tools/gen_peft_compat.py")
    enum_types = {t.value for t in peft.PeftType}
    checked = 0
    for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        peft_type = getattr(key, "value", key)
        if peft_type not in enum_types:  # mapping-only aliases such as LORAPLUS
            continue
        real = {f.name for f in dataclasses.fields(cls) if f.init}
        assert fields_in(peft_type, peft.__version__) == real, peft_type
        checked += 1
    assert checked >= 40


# -- the key filter ------------------------------------------------------------------------
def test_a_peft_0_21_lora_config_reduced_for_0_13_has_only_keys_0_13_knows(lora_config_json):
    config = lora_config_json
    reduced, dropped = drop_unknown_keys(config, "0.13")
    known = fields_in("LORA", "0.13.0")
    assert set(reduced) <= known
    assert set(reduced) | set(dropped) == set(config) and not set(reduced) & set(dropped)
    assert dropped == sorted(dropped)
    assert {"lora_bias", "exclude_modules", "eva_config"} <= set(dropped)
    assert all(config[k] == v for k, v in reduced.items())
    assert reduced["use_dora"] is True and reduced["r"] == 8
    # nothing to drop for the peft that wrote it
    installed = config.get("peft_version") or ""
    if installed in TABLE["versions"]:
        assert drop_unknown_keys(config, installed) == (config, [])


def test_versions_resolve_to_the_tabled_release_whose_fields_they_have():
    assert resolve_version("0.13") == "0.13.0"  # PEP 440: 0.13 is 0.13.0
    assert resolve_version("0.13.2") == "0.13.2"
    assert resolve_version("0.13.5") == "0.13.2"  # between releases: the older one's fields
    assert resolve_version("v0.14.0") == "0.14.0"
    assert resolve_version("0.14.0rc1") == resolve_version("0.14.0.dev0") == "0.13.2"  # before 0.14.0
    assert resolve_version("0.15.2.post1") == "0.15.2"
    assert resolve_version("0.99") is None and resolve_version("1.0.0") is None  # newer than the table


@pytest.mark.parametrize("bad", ["0.9", "0.9.0", "0.10.0rc1", "banana", "", "0.x", "13"])
def test_a_version_outside_the_table_or_not_a_version_is_refused(bad):
    with pytest.raises(PeftCompatError) as info:
        drop_unknown_keys({"peft_type": "LORA"}, bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ValidationError)
    assert f"{TABLE['versions'][0]} to {TABLE['versions'][-1]}" in str(info.value)


def test_a_key_from_a_peft_newer_than_the_table_is_dropped_for_tabled_targets():
    config = {"peft_type": "LORA", "r": 8, "use_dora": False, "brand_new_knob": 3}
    for target in ("0.13", TABLE["versions"][-1]):
        reduced, dropped = drop_unknown_keys(config, target)
        assert dropped == ["brand_new_knob"] and reduced == {"peft_type": "LORA", "r": 8, "use_dora": False}
    assert drop_unknown_keys(config, "0.99") == (config, [])  # that peft may well know it
    assert "newer than peft" in peft_compat.describe_dropped(["brand_new_knob"], "LORA")
    assert peft_compat.describe_dropped(["lora_bias"], "LORA") == "lora_bias (peft 0.14.0)"


def test_the_keys_peft_needs_are_never_dropped(monkeypatch):
    """Even if the table omitted them (it does not), these four stay."""
    fake = {"versions": ["0.10.0"], "types": {"LORA": {"r": "0.10.0"}},
            "fields": {"LORA": [{"versions": ["0.10.0"], "fields": ["r"]}]}}
    monkeypatch.setattr(peft_compat, "_table", lambda: fake)
    config = {"peft_type": "LORA", "base_model_name_or_path": "acme/llama-tiny", "task_type": "CAUSAL_LM",
              "revision": None, "r": 8, "lora_alpha": 16}
    reduced, dropped = drop_unknown_keys(config, "0.10.0")
    assert set(reduced) == NEVER_DROPPED | {"r"} and dropped == ["lora_alpha"]


def test_a_method_the_target_peft_lacks_is_an_error_not_a_silent_pass():
    with pytest.raises(PeftCompatError, match=r"peft 0\.10\.0 has no VERA config.*0\.11\.0"):
        drop_unknown_keys({"peft_type": "VERA", "r": 256}, "0.10")
    with pytest.raises(PeftCompatError, match="no peft_type"):
        drop_unknown_keys({"r": 8}, "0.13")
    assert drop_unknown_keys({"peft_type": "VERA", "r": 256}, "0.11") == ({"peft_type": "VERA", "r": 256}, [])


# -- hub.pull(ref, peft_version=...) ------------------------------------------------------------
@pytest.fixture
def adapter_files(lora_config_json) -> dict[str, bytes]:
    config = dict(lora_config_json, base_model_name_or_path="acme/llama-tiny")
    return {"adapter_config.json": json.dumps(config, indent=2).encode(),
            "adapter_model.safetensors": b"\x07" * 2048, "README.md": b"# bot\n"}


def test_pull_with_peft_version_hands_out_an_adjusted_copy_and_leaves_the_cache_alone(make_hub, fake_hub, adapter_files):
    v = fake_hub.add_version("acme/bot", adapter_files)
    hub = make_hub()
    with pytest.warns(PeftCompatWarning) as caught:
        path = hub.pull("acme/bot", peft_version="0.13")
    [warning] = caught
    text = str(warning.message)
    assert warning.filename == __file__  # points at the caller's line
    assert text.startswith("acme/bot@1: dropped from adapter_config.json the keys peft 0.13.0 does not know:")
    assert "lora_bias (peft 0.14.0)" in text and "use_dora" not in text

    digest_hex = v["digest"].split(":")[1]
    snapshot = hub.cache.snapshot_dir(digest_hex)
    assert path == hub.cache.root / "compat" / f"{digest_hex}-peft0.13.0"
    files = tree(path)
    assert set(files) == set(adapter_files)
    config = json.loads(files["adapter_config.json"])
    assert set(config) <= fields_in("LORA", "0.13.0") and config["base_model_name_or_path"] == "acme/llama-tiny"
    # the other files are the cached blobs themselves, not copies
    weights = path / "adapter_model.safetensors"
    assert weights.resolve() == hub.cache.blob_path(sha(adapter_files["adapter_model.safetensors"]))
    # the cache is untouched: snapshot and blob still hold the pushed config
    assert tree(snapshot) == adapter_files
    blob = hub.cache.blob_path(sha(adapter_files["adapter_config.json"]))
    assert sha(blob.read_bytes()) == sha(adapter_files["adapter_config.json"])

    # a second pull reuses both, downloads nothing, and warns again
    gets = len(fake_hub.blob_gets())
    with pytest.warns(PeftCompatWarning):
        assert hub.pull(f"acme/bot@{v['digest']}", peft_version="0.13.0") == path
    assert len(fake_hub.blob_gets()) == gets
    # without peft_version, or for a peft that knows every key, the plain snapshot
    assert hub.pull("acme/bot") == snapshot
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.pull("acme/bot", peft_version="0.99") == snapshot


def test_pull_with_peft_version_into_a_local_dir(make_hub, fake_hub, adapter_files, tmp_path):
    fake_hub.add_version("acme/bot", adapter_files)
    with pytest.warns(PeftCompatWarning):
        out = make_hub().pull("acme/bot", local_dir=tmp_path / "copy", peft_version="0.13")
    files = tree(out)
    assert not (out / "adapter_config.json").is_symlink()
    assert set(json.loads(files["adapter_config.json"])) <= fields_in("LORA", "0.13.0")
    assert files["adapter_model.safetensors"] == adapter_files["adapter_model.safetensors"]


def test_pull_of_a_model_or_a_current_config_changes_nothing(make_hub, fake_hub):
    fake_hub.add_version("acme/llama-tiny", {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * 64},
                         kind="model")
    hub = make_hub()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = hub.pull("acme/llama-tiny", peft_version="0.13")
    assert path.parent == hub.cache.root / "snapshots"


def test_pull_refuses_an_unknown_peft_version_before_any_request(make_hub, fake_hub, adapter_files):
    fake_hub.add_version("acme/bot", adapter_files)
    before = len(fake_hub.server.seen)
    with pytest.raises(PeftCompatError, match=r"0\.10\.0 to"):
        make_hub().pull("acme/bot", peft_version="0.8")
    assert len(fake_hub.server.seen) == before


def test_cli_pull_peft_version_names_the_dropped_keys_on_stderr(capsys, monkeypatch, fake_hub, adapter_files, tmp_path):
    for name, value in (("PEFTHUB_URL", fake_hub.url), ("PEFTHUB_TOKEN", TOKEN),
                        ("PEFTHUB_CACHE", str(tmp_path / "cache")), ("PEFTHUB_DISABLE_PROGRESS_BARS", "1")):
        monkeypatch.setenv(name, value)
    fake_hub.add_version("acme/bot", adapter_files)
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
