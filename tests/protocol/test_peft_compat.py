"""pefthub.protocol.peft_compat: the table of config keys per peft release, and the key filter that uses it.

The table (``pefthub/protocol/peft_compat.json``) is generated from the peft wheels by
``sdk/tools/gen_peft_compat.py``; its per-release field lists are the ground truth the
filter is checked against here, and the installed peft is checked against the table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pefthub.protocol import peft_compat
from pefthub.protocol.peft_compat import NEVER_DROPPED, PeftCompatError, drop_unknown_keys, resolve_version

TABLE = json.loads((Path(peft_compat.__file__).parent / "peft_compat.json").read_text())


def fields_in(peft_type: str, version: str) -> set[str]:
    """The exact constructor fields of ``peft_type``'s config class in that release."""
    return next(set(run["fields"]) for run in TABLE["fields"][peft_type] if version in run["versions"])


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
    assert isinstance(info.value, ValueError)
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


def test_adjust_config_rewrites_only_when_a_key_goes():
    from pefthub.protocol.peft_compat import adjust_config

    pushed = b'{"r": 8, "peft_type": "LORA", "lora_bias": false}'
    adjusted = adjust_config(pushed, "0.13")
    assert adjusted.dropped == ["lora_bias"] and adjusted.peft_type == "LORA"
    assert adjusted.data == b'{\n  "peft_type": "LORA",\n  "r": 8\n}\n'  # the hub's one JSON form: sorted, indented
    assert adjust_config(b'{"r": 8, "peft_type": "LORA"}', "0.13") is None  # nothing to drop: the file stays as pushed
    assert adjust_config(b"[1, 2]", "0.13") is None and adjust_config(b"{not json", "0.13") is None
