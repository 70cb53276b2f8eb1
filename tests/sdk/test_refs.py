from __future__ import annotations

import pytest

from pefthub import Hub, RefError, ValidationError
from pefthub.refs import check_alias, parse_ref

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("text", "namespace", "name", "revision", "explicit"),
    [
        ("acme/support-bot", "acme", "support-bot", "latest", False),
        ("acme/support-bot@latest", "acme", "support-bot", "latest", True),
        ("acme/support-bot@3", "acme", "support-bot", "3", True),
        ("acme/support-bot@prod", "acme", "support-bot", "prod", True),
        (f"acme/support-bot@sha256:{DIGEST}", "acme", "support-bot", f"sha256:{DIGEST}", True),
        (f"acme/bot@sha256:{DIGEST.upper()}", "acme", "bot", f"sha256:{DIGEST}", True),
        ("a_b-c/Llama-3.1-8B@rc-1.2_x", "a_b-c", "Llama-3.1-8B", "rc-1.2_x", True),
        ("  acme/bot@2  ", "acme", "bot", "2", True),
    ],
)
def test_parse_good_refs(text, namespace, name, revision, explicit):
    ref = parse_ref(text)
    assert (ref.namespace, ref.name, ref.revision, ref.explicit) == (namespace, name, revision, explicit)
    assert ref.repo_id == f"{namespace}/{name}"


def test_digest_ref_exposes_its_hex():
    ref = parse_ref(f"acme/bot@sha256:{DIGEST}")
    assert ref.is_digest and ref.digest_hex == DIGEST
    assert not parse_ref("acme/bot@3").is_digest
    assert parse_ref("acme/bot@3").is_number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "acme",
        "acme/",
        "/bot",
        "acme/bot/extra",
        "acme/bot@",
        "acme/bot@0",
        "acme/bot@03",
        "acme/bot@1a",
        "acme/bot@-prod",
        "acme/bot@sha256:abc",
        f"acme/bot@sha256:{DIGEST}0",
        f"acme/bot@md5:{DIGEST}",
        "acme/bot@prod@2",
        "-acme/bot",
        "acme/..",
        "../bot",
        "acme/b ot",
        "acme\\bot",
        "hf://acme/bot",
        "a.b/bot",  # no dots in a namespace: the server's grammar is the one grammar
        f"{'a' * 65}/bot",
        f"acme/{'b' * 97}",
        "acme/bot@²",
        "acme/bot@007",
    ],
)
def test_parse_bad_refs_shows_accepted_forms(text):
    with pytest.raises(RefError) as info:
        parse_ref(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("namespace/name", "namespace/name@3", "namespace/name@prod", "namespace/name@sha256:"):
        assert form in message


def test_ref_error_is_a_validation_error():
    assert issubclass(RefError, ValidationError)
    # a wrong type is a RefError too, not an AttributeError from deep inside
    with pytest.raises(RefError, match="must be a string"):
        parse_ref(3)  # type: ignore[arg-type]


def test_repository_operations_refuse_a_revision_without_a_request(tmp_path):
    hub = Hub("http://127.0.0.1:9", "t", cache_dir=tmp_path, max_retries=0)
    with pytest.raises(RefError, match="takes a repository"):
        hub.delete_repo("acme/bot@3")


@pytest.mark.parametrize("alias", ["prod", "staging-2", "v1.2_rc"])
def test_good_alias(alias):
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", ["", "2", "1abc", "-x", "a/b", "a" * 65, "sha256:" + DIGEST])
def test_bad_alias(alias):
    with pytest.raises(RefError):
        check_alias(alias)
