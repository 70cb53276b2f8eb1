"""registry.acceptance on hostile file contents: size caps before any byte is read, JSON depth, strings a
database cannot store, text that is not UTF-8, and memory bounded by the file's size."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc

import pytest

from pefthub.protocol.limits import MAX_CONFIG_JSON_SIZE, MAX_JSON_DEPTH, MAX_JSON_SIZE, MAX_TEXT_SIZE
from pefthub_server.core.errors import TooLarge
from pefthub_server.registry import acceptance
from pefthub_server.registry.models import Version
from tests.backend.registry.artefacts import fails
from tests.conftest import api_push


def reader(data: bytes):
    """A read_range over ``data`` that records how many bytes were asked for."""
    asked: list[int] = []

    def read_range(start: int, length: int) -> bytes:
        asked.append(length)
        return data[start:start + length]

    return read_range, asked


def document(path: str, data: bytes):
    category = acceptance.check_file_type(path)
    read_range, _ = reader(data)
    return acceptance.read_document(path, category, len(data), read_range)


def nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


# --- size caps: refused from the declared size, before a byte is read ----------------------------


@pytest.mark.parametrize(("path", "limit"), [("adapter_config.json", MAX_CONFIG_JSON_SIZE),
                                             ("config.json", MAX_CONFIG_JSON_SIZE),
                                             ("tokenizer.json", MAX_JSON_SIZE), ("sub/config.json", MAX_JSON_SIZE),
                                             ("README.md", MAX_TEXT_SIZE), ("notes.txt", MAX_TEXT_SIZE)])
def test_a_file_over_its_cap_is_a_413_naming_file_and_limit(path: str, limit: int) -> None:
    read_range, asked = reader(b"")
    with pytest.raises(TooLarge) as info:
        acceptance.read_document(path, acceptance.check_file_type(path), limit + 1, read_range)
    err = info.value
    assert (err.status, err.code) == (413, "too_large") and asked == []
    assert f"`{path}` is {limit + 1} bytes" in err.message and f"{limit} bytes" in err.message
    assert err.detail == {"path": path, "size": limit + 1, "limit": limit}


def test_configs_are_read_and_returned_other_json_only_checked() -> None:
    assert document("adapter_config.json", b'{"peft_type": "LORA", "r": 8}') == {"peft_type": "LORA", "r": 8}
    assert document("config.json", b'{"model_type": "llama"}') == {"model_type": "llama"}
    # transformers writes int(1e30) as model_max_length: big integers are valid JSON
    assert document("tokenizer_config.json", b'{"model_max_length": 1000000000000000019884624838656}') is None
    assert document("sub/config.json", b'[1, "two", {"three": null}]') is None
    assert document("README.md", "# Café ☕\n".encode()) is None
    for path in ("train.jsonl", "tokenizer.model", "merges.txt"):  # data and tokenizer files: type and magic only
        assert document(path, b"\xff\xfe not checked") is None


# --- JSON ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["adapter_config.json", "tokenizer.json"])
@pytest.mark.parametrize(("data", "words"), [
    (b'{"a": 1} x', ""), (b'{"a": 1,}', ""), (b"", ""), (b'{"a": NaN}', ""), (b"{'a': 1}", ""),
    (b'{"a": "\xff"}', "UTF-8"), (b'{"a": "\x01"}', ""),
    (b'\xef\xbb\xbf{"a": 1}', "byte-order mark"),
    (nested(MAX_JSON_DEPTH + 1), f"nested more than {MAX_JSON_DEPTH} levels deep"),
    (b"[" * 100_000 + b"]" * 100_000, f"nested more than {MAX_JSON_DEPTH} levels deep"),
])
def test_invalid_json_is_refused_naming_the_file(path: str, data: bytes, words: str) -> None:
    err = fails("invalid_json", document, path, data)
    assert err.message.startswith(f"`{path}` is not valid JSON") and words in err.message, err.message


def test_depth_is_counted_outside_strings() -> None:
    text = b'{"a": "' + b"[{" * 1000 + b'\\"]", "b": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    assert document("adapter_config.json", text)["a"].startswith("[{")
    assert document("tokenizer.json", text) is None
    # an unterminated string runs to the end: its brackets are not nesting, and the parser says what is wrong
    assert "nested" not in fails("invalid_json", document, "tokenizer.json", b'["open ' + b"[" * 100).message


@pytest.mark.parametrize(("data", "where", "what"), [
    (b'{"peft_type": "LORA", "task_type": "CAUSAL\\u0000LM"}', "task_type", "U+0000"),
    (b'{"a": {"b": [1, "x\\u0000"]}}', "a.b[1]", "U+0000"),
    (b'{"a": {"k\\u0000": 1}}', "a.k\\x00", "U+0000"),
    (b'{"architectures": ["\\ud800"]}', "architectures[0]", "U+D800"),
])
def test_config_strings_a_database_cannot_store_are_refused(data: bytes, where: str, what: str) -> None:
    err = fails("invalid_json", document, "config.json", data)
    assert f"`{where}`" in err.message and what in err.message, err.message
    assert err.detail["field"] == where


def test_config_numbers_out_of_range_are_refused() -> None:
    assert "the number 1e999 is out of range" in fails("invalid_json", document, "config.json", b'{"a": 1e999}').message
    assert "4300" in fails("invalid_json", document, "config.json", b'{"a": ' + b"9" * 5000 + b"}").message


def test_an_escaped_backslash_before_u0000_is_plain_text() -> None:
    assert document("config.json", b'{"a": "C:\\\\u0000"}') == {"a": "C:\\u0000"}


@pytest.mark.parametrize("item", [b"[]", b'""', b'"[\\\\\\"{"', b"1.5", b"{}"])
def test_checking_a_large_json_file_takes_a_small_multiple_of_its_size(item: bytes) -> None:
    """A JSON file made of empty arrays builds ~24x its size in objects when parsed; checking builds none."""
    data = b"[" + (item + b",") * (4 * 1024 * 1024 // (len(item) + 1)) + item + b"]"
    tracemalloc.start()
    try:
        assert document("tokenizer.json", data) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(data), f"{peak / len(data):.1f}x"


@pytest.mark.parametrize(("name", "named"), [("w\u0000.weight", "U+0000"), ("w\udc80.weight", "U+DC80")])
def test_a_tensor_name_a_database_cannot_store_is_refused(name: str, named: str) -> None:
    """A base's tensor names become its fingerprint, a JSON column: PostgreSQL cannot store U+0000."""
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    data = struct.pack("<Q", len(header)) + header + b"\0" * 4
    read_range, _ = reader(data)
    err = fails("invalid_safetensors", acceptance.parse_safetensors_header, "model.safetensors", len(data), read_range)
    assert "`model.safetensors`" in err.message and named in err.message, err.message


def test_a_blob_under_many_paths_is_read_once_per_kind() -> None:
    """10,000 paths may name one 64 MiB blob: its content is read once per kind, and never again once known."""
    from pefthub.protocol.manifest import Entry

    data, sha = b'{"model_type": "llama"}', "a" * 64
    reads: list[list[int]] = []

    def make_reader():
        read_range, asked = reader(data)
        reads.append(asked)
        return read_range

    def results(checks, paths):
        return [checks.result(Entry(path, sha, len(data)), acceptance.check_kind(path, acceptance.check_file_type(path)),
                              make_reader) for path in paths]

    paths = ["config.json", "a/config.json", "b.json", "c/d.json", "config.json", "notes.txt"]
    checks = acceptance.BlobChecks()
    found = results(checks, paths)
    assert found == [{"model_type": "llama"}, None, None, None, {"model_type": "llama"}, None]
    assert len(reads) == 3 and set(checks.fresh) == {(sha, "config"), (sha, "json"), (sha, "text")}
    found[0]["model_type"] = "changed"  # each result is the caller's own object
    assert results(checks, ["config.json"]) == [{"model_type": "llama"}]

    known = acceptance.BlobChecks(checks.fresh)  # what a later commit finds recorded
    assert results(known, paths) == [{"model_type": "llama"}, None, None, None, {"model_type": "llama"}, None]
    assert len(reads) == 3 and known.fresh == {}


# --- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "words"), [(b"# card\n\xff\n", "byte 7"), ("é".encode()[:1], "byte 0")])
def test_text_that_is_not_utf8_is_refused(data: bytes, words: str) -> None:
    err = fails("invalid_text", document, "README.md", data)
    assert err.message.startswith("`README.md` is not UTF-8 text") and words in err.message, err.message


# --- through the API -------------------------------------------------------------------------------


@pytest.fixture
def adapter_folder(alice, api, acme_base, tiny_adapter, tmp_path):
    client = api(alice.token)
    response = client.post("/api/v1/repos", {"namespace": "acme", "name": "support-bot", "kind": "adapter",
                                             "base_model": "acme/llama-tiny"}, format="json")
    assert response.status_code == 201, response.content
    folder = tmp_path / "a"
    shutil.copytree(tiny_adapter[0], folder)
    return client, folder


def _refused(client, folder, status: int, code: str) -> str:
    response = api_push(client, "acme/support-bot", folder)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code, response.json()
    assert not Version.objects.filter(repository__name="support-bot").exists()
    return response.json()["error"]["message"]


def test_push_refuses_an_oversized_adapter_config(adapter_folder) -> None:
    client, folder = adapter_folder
    config = json.loads((folder / "adapter_config.json").read_text())
    config["notes"] = "x" * MAX_CONFIG_JSON_SIZE
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "`adapter_config.json`" in _refused(client, folder, 413, "too_large")


@pytest.mark.parametrize(("name", "data", "status", "code"), [
    ("tokenizer.json", b'{"model": {"vocab": {"a": 1,}}}', 400, "invalid_json"),
    ("special_tokens_map.json", nested(1000), 400, "invalid_json"),
    ("README.md", b"# bot\n\xc0\n", 400, "invalid_text"),
])
def test_push_checks_every_json_and_text_file(adapter_folder, name: str, data: bytes, status: int, code: str) -> None:
    client, folder = adapter_folder
    (folder / name).write_bytes(data)
    assert f"`{name}`" in _refused(client, folder, status, code)


def test_push_refuses_a_nul_in_the_adapter_config(adapter_folder) -> None:
    """PostgreSQL cannot store U+0000 in a JSON column: a 400 naming the field, never a 500."""
    client, folder = adapter_folder
    config = json.loads((folder / "adapter_config.json").read_text())
    config["task_type"] = "CAUSAL\u0000LM"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "`task_type`" in _refused(client, folder, 400, "invalid_json")
