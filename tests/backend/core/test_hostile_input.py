"""Hostile input gets a clear 4xx in bounded time and memory, never a 500 or unbounded work.

A ``target_modules`` regex that backtracks, JSON request bodies nested deep or holding strings
a database cannot store, absurd ``Range`` headers, NUL in a URL, invisible characters in names
and paths, a path that is both a file and a folder. Run on SQLite and, with DATABASE_URL, on
PostgreSQL, which cannot store NUL at all.
"""

from __future__ import annotations

import io
import json
import shutil
import time

import pytest

from pefthub.protocol.limits import MAX_JSON_DEPTH, MAX_REQUEST_CONTAINERS, MAX_TARGET_REGEX_LENGTH
from pefthub_server.core.http import parse_range
from pefthub_server.registry.models import Repository, Version
from tests.conftest import api_push, file_specs

#: nested repeats around a pattern that never matches: exponential backtracking on every module name.
#: Python's re takes ~10 s on the first 14 characters of `model.layers.0.self_attn.q_proj`, x4 per character.
EVIL = r"((.*.*)*)?(?!)"


@pytest.fixture
def adapter_repo(alice, api, acme_base):
    client = api(alice.token)
    response = client.post("/api/v1/repos", {"namespace": "acme", "name": "support-bot", "kind": "adapter",
                                             "base_model": "acme/llama-tiny"}, format="json")
    assert response.status_code == 201, response.content
    return client


@pytest.fixture
def acme_data(alice, api, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "row"}\n')
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    assert api_push(client, "acme/data", folder).status_code == 201


def _with_targets(tiny_adapter, tmp_path, targets) -> object:
    folder = tmp_path / "a"
    shutil.copytree(tiny_adapter[0], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = targets
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# --- target_modules regex -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_backtracking_target_regex_on_push_is_a_fast_400(adapter_repo, tiny_adapter, tmp_path):
    folder = _with_targets(tiny_adapter, tmp_path, EVIL)
    started = time.perf_counter()
    response = api_push(adapter_repo, "acme/support-bot", folder)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_adapter_config" and "target_modules" in error["message"]
    assert "took longer than" in error["message"] and "acme/llama-tiny@1" in error["message"]
    assert not Version.objects.filter(repository__name="support-bot").exists()
    assert elapsed < 5, elapsed  # the whole push; the match itself stops at 0.1 s of CPU


def test_a_target_regex_over_the_length_limit_is_refused_on_push(adapter_repo, tiny_adapter, tmp_path):
    folder = _with_targets(tiny_adapter, tmp_path, ".*" + "a?" * MAX_TARGET_REGEX_LENGTH)
    response = api_push(adapter_repo, "acme/support-bot", folder)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_adapter_config"
    assert f"the limit is {MAX_TARGET_REGEX_LENGTH}" in response.json()["error"]["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("targets", "words"), [(EVIL, "took longer than"),
                                                ("x" * (MAX_TARGET_REGEX_LENGTH + 1), "the limit is")])
def test_a_hostile_target_regex_on_job_submit_is_a_fast_400(alice, api, acme_base, acme_data, targets, words):
    spec = {"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/data", "output": "acme/bot",
            "method": "lora", "hyperparameters": {"r": 4, "max_steps": 2, "target_modules": targets}}
    started = time.perf_counter()
    response = api(alice.token).post("/api/v1/jobs", spec, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_spec" and error["detail"]["field"] == "hyperparameters.target_modules"
    assert words in error["message"], error
    assert time.perf_counter() - started < 5


def test_a_usual_target_regex_still_fits(adapter_repo, tiny_adapter, tmp_path):
    folder = _with_targets(tiny_adapter, tmp_path, r".*\.(q_proj|v_proj)")
    response = api_push(adapter_repo, "acme/support-bot", folder)
    assert response.status_code == 201, response.content
    assert response.json()["adapter"]["target_modules"] == r".*\.(q_proj|v_proj)"


# --- JSON request bodies ---------------------------------------------------------------------------


def _post(client, body: bytes, path: str = "/api/v1/repos"):
    return client.generic("POST", path, body, content_type="application/json")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 30_000])
def test_a_deeply_nested_body_is_a_400(alice, api, depth):
    body = b'{"namespace": "acme", "name": "x", "kind": "model", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    response = _post(api(alice.token), body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and f"nested more than {MAX_JSON_DEPTH} levels deep" in error["message"]
    assert not Repository.objects.filter(name="x").exists()


def test_a_body_of_countless_empty_arrays_is_a_413_before_parsing(alice, api):
    """Flat, shallow and within the byte limit, but millions of objects once parsed."""
    body = b'{"namespace": "acme", "name": "x", "kind": "model", "extra": [' + b"[]," * 2_000_000 + b"[]]}"
    response = _post(api(alice.token), body)
    assert response.status_code == 413, response.content
    assert response.json()["error"]["detail"] == {"limit": MAX_REQUEST_CONTAINERS}
    assert not Repository.objects.filter(name="x").exists()


def test_a_body_at_the_depth_limit_is_parsed(alice, api):
    depth = MAX_JSON_DEPTH - 1
    body = b'{"namespace": "acme", "name": "x", "kind": "model", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    assert _post(api(alice.token), body).status_code == 201


@pytest.mark.parametrize(("extra", "field", "named"), [
    ('"a\\u0000b"', "extra", "U+0000"),
    ('{"k": [1, "x\\u0000"]}', "extra.k[1]", "U+0000"),
    ('{"k\\u0000": 1}', "extra.k\\x00", "U+0000"),
    ('"\\udc80"', "extra", "U+DC80"),
])
def test_a_body_string_a_database_cannot_store_is_a_400_naming_the_field(alice, api, extra, field, named):
    body = ('{"namespace": "acme", "name": "x", "kind": "model", "extra": ' + extra + "}").encode()
    response = _post(api(alice.token), body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["detail"]["field"] == field and f"`{field}`" in error["message"] and named in error["message"]
    assert not Repository.objects.filter(name="x").exists()


def test_nul_in_a_commits_metadata_is_a_400(adapter_repo, tiny_adapter):
    """Version.metadata is a JSON column: on PostgreSQL a NUL in it was a 500."""
    folder = tiny_adapter[0]
    api_push(adapter_repo, "acme/support-bot", folder)  # blobs uploaded
    body = json.dumps({"files": file_specs(folder), "metadata": {"note": "a\u0000b"}}).encode()
    response = _post(adapter_repo, body, "/api/v1/repos/acme/support-bot/versions")
    assert response.status_code == 400 and response.json()["error"]["detail"]["field"] == "metadata.note"


def test_a_body_over_the_limit_is_a_413_and_read_no_further(alice, api, settings):
    from django.core.exceptions import RequestDataTooBig

    from pefthub_server.core.parsers import JSONParser

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"namespace": "acme", "name": "x", "kind": "model", "description": "d" * 2000}).encode()
    response = _post(api(alice.token), body)
    assert response.status_code == 413, response.content
    assert response.json()["error"]["code"] == "too_large"
    stream = io.BytesIO(b"[" + b"0," * 10_000_000 + b"0]")
    with pytest.raises(RequestDataTooBig):  # the 413 above is how it reaches a client
        JSONParser().parse(stream)
    assert stream.tell() <= 1001


# --- Range ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-" + "9" * 5000, (0, 99)),   # a last byte past the end: up to the end
    ("bytes=-" + "9" * 5000, (0, 99)),    # a suffix longer than the file: the whole file
    ("bytes=" + "0" * 5000 + "5-9", (5, 9)),
    ("bytes=" + "0" * 5000 + "-" + "0" * 4999 + "1", (0, 1)),
])
def test_a_range_with_thousands_of_digits_is_read_as_a_number(header, expected):
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=" + "9" * 5000 + "-", "bytes=" + "9" * 5000 + "-" + "9" * 5000])
def test_a_range_starting_past_any_file_is_a_416(header):
    from pefthub_server.core.errors import HubError

    with pytest.raises(HubError) as info:
        parse_range(header, 100)
    assert info.value.status == 416


def test_an_absurd_range_over_http_is_a_416_not_a_500(client, alice, api, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "row"}\n')
    uploader = api(alice.token)
    uploader.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    [entry] = api_push(uploader, "acme/data", tmp_path).json()["files"]
    response = client.get(entry["url"], HTTP_RANGE="bytes=" + "9" * 5000 + "-")
    assert response.status_code == 416 and response.json()["error"]["code"] == "range_not_satisfiable"
    whole = client.get(entry["url"], HTTP_RANGE="bytes=0-" + "9" * 5000)
    assert whole.status_code == 206 and b"".join(whole.streaming_content) == b'{"text": "row"}\n'


# --- NUL and control characters in URLs ------------------------------------------------------------


@pytest.mark.parametrize(("url", "where"), [
    ("/api/v1/repos?search=%00", "query string"),
    ("/api/v1/repos?search=a%00b&kind=model", "query string"),
    ("/api/v1/repos?se%00arch=a", "query string"),
    ("/api/v1/repos/acme/a%00b", "path"),
    ("/api/v1/repos/acme/a%1Fb/versions", "path"),
    ("/hf/api/models/acme/a%00b", "path"),
    ("/hf/acme/llama-tiny/resolve/main/a%00.json", "path"),
    ("/?search=%00", "query string"),
])
def test_a_control_character_in_the_url_is_a_400(alice, api, acme_base, url, where):
    response = api(alice.token).get(url)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_url" and where in error["message"] and "U+00" in error["message"], error


def test_a_url_with_plain_unicode_is_not_refused(alice, api, acme_base):
    assert api(alice.token).get("/api/v1/repos?search=caf%C3%A9").status_code == 200


# --- names and paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("name", "bot\u202egpj"),   # RIGHT-TO-LEFT OVERRIDE: shows as "botjpg"
    ("name", "b\u043et"),       # Cyrillic o
    ("name", "bot\u200b"),      # ZERO WIDTH SPACE
    ("name", "bot\u2028x"),     # LINE SEPARATOR
    ("namespace", "\u0430cme"),  # Cyrillic a
])
def test_bidi_and_homoglyph_names_are_refused(alice, api, field, value):
    body = {"namespace": "acme", "name": "bot", "kind": "model", field: value}
    response = api(alice.token).post("/api/v1/repos", body, format="json")
    assert response.status_code in (400, 404), response.content  # a namespace that is not ascii does not exist
    assert not Repository.objects.filter(name=body["name"]).exists()
    if response.status_code == 400:
        assert "letters, digits" in response.json()["error"]["message"]


def test_a_bidi_name_in_a_url_is_a_400(alice, api):
    response = api(alice.token).get("/api/v1/repos/acme/bot%E2%80%AEgpj")
    assert response.status_code == 400 and "letters, digits" in response.json()["error"]["message"]


@pytest.mark.parametrize(("path", "named"), [("adapter\u202egpj.safetensors", "U+202E RIGHT-TO-LEFT OVERRIDE"),
                                             ("a\u2029b.md", "U+2029 PARAGRAPH SEPARATOR"),
                                             ("notes\u200d.txt", "U+200D ZERO WIDTH JOINER")])
def test_a_manifest_path_with_an_invisible_character_is_a_400_naming_it(adapter_repo, path, named):
    files = [{"path": path, "sha256": "a" * 64, "size": 1}]
    for url in ("/api/v1/repos/acme/support-bot/uploads", "/api/v1/repos/acme/support-bot/versions"):
        response = adapter_repo.post(url, {"files": files}, format="json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_path"
        assert named in response.json()["error"]["message"]


def test_a_path_that_is_both_a_file_and_a_folder_is_refused(adapter_repo):
    files = [{"path": "notes.txt", "sha256": "a" * 64, "size": 1},
             {"path": "notes.txt/more.txt", "sha256": "b" * 64, "size": 1}]
    for url in ("/api/v1/repos/acme/support-bot/uploads", "/api/v1/repos/acme/support-bot/versions"):
        response = adapter_repo.post(url, {"files": files}, format="json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_path"
        assert "`notes.txt` is both a file and a folder" in response.json()["error"]["message"]


@pytest.mark.parametrize("url", ["/hf/api/models/acme/llama-tiny/tree/main/config.json/x",
                                 "/hf/acme/llama-tiny/resolve/main/config.json/x"])
def test_hf_paths_under_a_file_are_entry_not_found(alice, client, acme_base, url):
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {alice.token}")
    assert response.status_code == 404 and response["X-Error-Code"] == "EntryNotFound"
