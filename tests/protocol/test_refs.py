"""pefthub.protocol.refs: one grammar for names, revisions and references, and the Hugging Face revisions."""

from __future__ import annotations

import pytest

from pefthub.protocol import refs
from pefthub.protocol.refs import Ref, check_alias, check_name, check_namespace, check_revision, parse_ref
from tests.protocol.conftest import refused

DIGEST = "ab" * 32


GOOD_NAMES = [(check_namespace, n) for n in ("acme", "a", "A1", "team_x", "pefthub-worker", "x" * 64)] + [
    (check_name, n) for n in ("bot", "Llama-3.1-8B", "a_b.c", "x" * 96, "7b")]
BAD_NAMES = [(check_namespace, name, why) for name, why in (
    ("", "empty"), ("x" * 65, "65 characters"), ("a.b", "only letters"), ("-acme", "starts and ends"),
    ("acme-", "starts and ends"), ("a--b", "'--'"), ("é", "only letters"), ("a b", "only letters"), ("a/b", "only letters"),
)] + [(check_name, name, why) for name, why in (
    ("", "empty"), ("x" * 97, "97 characters"), ("..", "starts and ends"), (".hidden", "starts and ends"),
    ("bot.", "starts and ends"), ("a..b", "'..'"), ("a--b", "'--'"), ("bot.git", ".git"), ("a@b", "only letters"),
)]


@pytest.mark.parametrize(("check", "name"), GOOD_NAMES)
def test_good_names(check, name):
    assert check(name) == name


@pytest.mark.parametrize(("check", "name", "why"), BAD_NAMES)
def test_bad_names_say_why(check, name, why):
    assert why in refused("validation_error", check, name).message


@pytest.mark.parametrize(("revision", "canonical"), [
    ("1", "1"), ("999999999", "999999999"), ("prod", "prod"), ("latest", "latest"), ("v1.2_rc-3", "v1.2_rc-3"),
    (f"sha256:{DIGEST}", f"sha256:{DIGEST}"), (f"sha256:{DIGEST.upper()}", f"sha256:{DIGEST}"),
])
def test_good_revisions_in_canonical_form(revision, canonical):
    assert check_revision(revision) == canonical


@pytest.mark.parametrize(("revision", "why"), [
    ("0", "start at 1"), ("007", "leading zeros"), ("1234567890", "at most 9 digits"), ("1a", "only the digits"),
    ("²", "neither"), ("١", "neither"), ("-prod", "neither"), ("sha256:abc", "64 hex"), ("", "empty"),
    ("a" * 65, "neither"), ("pr/1", "neither"),
])
def test_bad_revisions_say_why(revision, why):
    assert why in refused("invalid_reference", check_revision, revision).message


def test_aliases_start_with_a_letter():
    assert check_alias("prod") == "prod"
    for bad in ("2", "_x", "a" * 65, "sha256:" + DIGEST):
        refused("validation_error", check_alias, bad)


def test_a_reference_knows_its_parts():
    ref = parse_ref(f"acme/bot@sha256:{DIGEST.upper()}")
    assert (ref.repo_id, ref.revision, ref.is_digest, ref.digest_hex, ref.number) == (
        "acme/bot", f"sha256:{DIGEST}", True, DIGEST, None)
    assert parse_ref("acme/bot@3").number == 3 and parse_ref("acme/bot@3").is_number
    assert str(parse_ref("acme/bot")) == "acme/bot" and str(parse_ref("acme/bot@latest")) == "acme/bot@latest"
    assert parse_ref("acme/bot").at(4) == Ref("acme", "bot", "4", explicit=True)
    err = refused("invalid_reference", parse_ref, "acme/bot@3", field="output", allow_revision=False)
    assert err.field == "output" and "takes a repository" in err.message


def test_hugging_face_revisions_and_commits():
    assert refs.hf_revision("acme/bot") == refs.hf_revision("acme/bot@latest") == "main"
    assert refs.hf_revision("acme/bot@3") == "3" and refs.hf_revision(f"acme/bot@sha256:{DIGEST}") == DIGEST[:40]
    digest = "0123456789abcdef" * 4
    variant = refs.hf_commit(digest, "peft-0.13")
    assert refs.is_hf_commit(variant) and variant != refs.hf_commit(digest)
    assert variant[: refs.HF_VARIANT_PREFIX] == digest[: refs.HF_VARIANT_PREFIX]  # found by an indexed prefix
    assert refs.hf_commit(digest, "peft-0.14") != variant
