"""pefthub.protocol.manifest: path rules."""

from __future__ import annotations

import hashlib
import json

import pytest

from pefthub.protocol.limits import MAX_PATH_LENGTH
from pefthub.protocol.manifest import check_path, manifest_digest, parse_manifest
from tests.protocol.conftest import refused


@pytest.mark.parametrize("path", ["adapter_model.safetensors", "a/b/c.json", "tokenizer/vocab.txt",
                                  ".gitattributes", "x" * MAX_PATH_LENGTH, "données/é.md", "a..b/c.d.json", "..a"])
def test_check_path_accepts_relative_paths_unchanged(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize(("path", "rule"), [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("C:/Windows/x.json", "absolute"),
    ("c:x.json", "absolute"),
    ("../x.json", "'..'"),
    ("a/../../x.json", "'..'"),
    ("./x.json", "'.'"),
    ("a/./x.json", "'.'"),
    ("a//b.json", "empty component"),
    ("a/", "empty component"),
    ("a\\b.json", "backslash"),
    ("a\x00b.json", "control"),
    ("a\nb.json", "control"),
    ("a\x7fb.json", "control"),
    ("x" * (MAX_PATH_LENGTH + 1), "limit"),
    (".git/config", ".git"),
    ("sub/.GIT/hooks/pre-commit", ".git"),
])
def test_check_path_refuses(path: str, rule: str) -> None:
    err = refused("invalid_path", check_path, path)
    assert rule in err.message
    assert "path `" in err.message


@pytest.mark.parametrize(("path", "named"), [
    ("evil\u202egpj.safetensors", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("a\u2066b/c.json", "U+2066 LEFT-TO-RIGHT ISOLATE"),
    ("a\u200bb.json", "U+200B ZERO WIDTH SPACE"),
    ("\ufeffREADME.md", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ("a\u2028b.md", "U+2028 LINE SEPARATOR"),
    ("a\u2029b.md", "U+2029 PARAGRAPH SEPARATOR"),
    ("a\x00b.json", "U+0000"),
    ("a\x85b.json", "U+0085"),
    ("a\ud800b.json", "U+D800"),
])
def test_check_path_names_the_invisible_character(path: str, named: str) -> None:
    """Characters that hide or reorder what a reader sees, break lines, or cannot be stored are refused by name."""
    err = refused("invalid_path", check_path, path)
    assert named in err.message, err.message


def test_manifest_digest_is_the_documented_canonical_form():
    files = [
        {"path": "b.json", "sha256": "2" * 64, "size": 2},
        {"path": "a.safetensors", "sha256": "1" * 64, "size": 10},
    ]
    # Written out by hand from docs/api.md: sorted by path, sort_keys, no spaces.
    canonical = (
        '[{"path":"a.safetensors","sha256":"' + "1" * 64 + '","size":10},'
        '{"path":"b.json","sha256":"' + "2" * 64 + '","size":2}]'
    )
    assert json.dumps(sorted(files, key=lambda f: f["path"]), sort_keys=True, separators=(",", ":")) == canonical
    assert manifest_digest(files) == hashlib.sha256(canonical.encode()).hexdigest()


def test_parse_manifest_checks_every_entry_and_the_tree() -> None:
    sha = "a" * 64
    entries = parse_manifest([{"path": "b/c.json", "sha256": sha, "size": 3}, {"path": "a.json", "sha256": sha, "size": 0}])
    assert [(e.path, e.size) for e in entries] == [("b/c.json", 3), ("a.json", 0)]
    cases = [
        ([], "validation_error", "non-empty list"),
        ([{"path": "a", "sha256": sha.upper(), "size": 1}], "validation_error", "lowercase hex"),
        ([{"path": "a", "sha256": sha, "size": -1}], "validation_error", "non-negative"),
        ([{"path": "a", "sha256": sha, "size": True}], "validation_error", "non-negative"),
        ([{"path": "../a", "sha256": sha, "size": 1}], "invalid_path", "'..'"),
        ([{"path": "a", "sha256": sha, "size": 1}] * 2, "invalid_path", "listed twice"),
        ([{"path": "a", "sha256": sha, "size": 1}, {"path": "a/b", "sha256": sha, "size": 1}], "invalid_path",
         "both a file and a folder"),
        (["a"], "validation_error", "must be an object"),
    ]
    for files, code, words in cases:
        assert words in refused(code, parse_manifest, files).message, files
    assert "at most 2 files" in refused("validation_error", parse_manifest, [{}] * 3, max_files=2).message

