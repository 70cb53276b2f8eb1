"""One grammar: the same references get one answer from the SDK parser, the REST paths and the /hf paths.

Good references resolve everywhere (200); bad ones are refused everywhere (a RefError in the SDK,
a 4xx from both APIs, never a 5xx), for the same reason, worded by pefthub.protocol.refs. And the
grammar of the messages themselves: "an adapter", and a missing revision said as what it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

import pefthub
from pefthub.protocol.refs import name_problem, namespace_problem, revision_problem
from pefthub.protocol.words import with_article

GOOD = ["acme/data", "acme/data@1", "acme/data@latest", "acme/data@prod", "acme/data@{digest}", "acme/data@{DIGEST}"]
BAD = [
    "acme/data@0", "acme/data@007", "acme/data@²", "acme/data@١", "acme/data@1a", "acme/data@9999999999",
    "acme/data@-prod", "acme/data@sha256:abc", f"acme/data@{'a' * 65}", "a.b/data", f"{'a' * 65}/data", f"{'a' * 97}/data",
    f"acme/{'d' * 97}", "acme/da--ta", "acme/data.", "-acme/data",
]


@pytest.fixture
def data_repo(alice, hub_for, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    version = hub_for(alice).push(tmp_path / "train.jsonl", "acme/data", aliases=["prod"])
    return version.digest


def _answers(ref: str, live_server, token: str) -> dict:
    """(outcome, message) from the SDK parser, REST and /hf for ``ref``: outcome is ok, refused or error."""
    repo, _, revision = ref.partition("@")
    ns, _, name = repo.partition("/")
    headers = {"Authorization": f"Bearer {token}"}
    seg = "/".join(quote(part, safe="") for part in (ns, name))
    rest = requests.get(f"{live_server.url}/api/v1/repos/{seg}/versions/{quote(revision or 'latest', safe=':')}",
                        headers=headers)
    hf = requests.get(f"{live_server.url}/hf/api/datasets/{seg}/revision/{quote(revision or 'main', safe=':')}",
                      headers=headers)
    try:
        pefthub.parse_ref(ref)
        sdk = ("ok", "")
    except pefthub.RefError as exc:
        sdk = ("refused", exc.message)

    def outcome(response) -> tuple[str, str]:
        kind = "ok" if response.status_code < 300 else "refused" if response.status_code < 500 else "error"
        body = response.json()
        return kind, (body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error", ""))

    return {"sdk": sdk, "rest": outcome(rest), "hf": outcome(hf), "rest_status": rest.status_code}


@pytest.mark.parametrize("ref", GOOD)
def test_good_references_resolve_everywhere(ref, data_repo, alice, live_server):
    ref = ref.format(digest=data_repo, DIGEST=data_repo.upper().replace("SHA256:", "sha256:"))
    answers = _answers(ref, live_server, alice.token)
    assert {where: answers[where][0] for where in ("sdk", "rest", "hf")} == {"sdk": "ok", "rest": "ok", "hf": "ok"}


@pytest.mark.parametrize("ref", BAD)
def test_bad_references_are_refused_everywhere_for_one_reason(ref, data_repo, alice, live_server):
    answers = _answers(ref, live_server, alice.token)
    assert {where: answers[where][0] for where in ("sdk", "rest", "hf")} == {
        "sdk": "refused", "rest": "refused", "hf": "refused"}, answers
    assert answers["rest_status"] == 400, answers
    repo, _, revision = ref.partition("@")
    ns, _, name = repo.partition("/")
    why = namespace_problem(ns) or name_problem(name) or revision_problem(revision)
    assert why is not None
    for where in ("sdk", "rest", "hf"):
        assert why in answers[where][1], (where, answers[where][1])


# --- the words of messages ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
#: "a {kind}" wrote "a adapter": a word known only at run time takes pefthub.protocol.words.with_article
RUNTIME_ARTICLE = re.compile(r"(?<![\w'-])[aA]n? (\{\{ *|\{)[A-Za-z_]")


def test_no_message_puts_a_before_a_word_it_learns_at_run_time():
    sources = [path for part in ("backend/pefthub_server", "sdk/pefthub", "workers/pefthub_worker")
               for pattern in ("*.py", "*.html", "*.txt") for path in (ROOT / part).rglob(pattern)]
    assert len(sources) > 50
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in sources
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if RUNTIME_ARTICLE.search(line)]
    assert found == []
    assert [with_article(word) for word in ("adapter", "model", "dataset", "IA3", "OFT", "LORA", "UNILORA", "update")] == [
        "an adapter", "a model", "a dataset", "an IA3", "an OFT", "a LORA", "a UNILORA", "an update"]


def test_a_job_on_the_wrong_kind_of_repository_says_an_adapter(data_repo, alice, hub_for):
    hub = hub_for(alice)
    with pytest.raises(pefthub.ValidationError) as info:
        hub.merge("acme/data", output="acme/merged")
    assert info.value.message == "adapters[0].ref `acme/data` is a dataset repository, not an adapter."


def test_a_missing_revision_is_said_as_what_it_is(data_repo, alice, hub_for):
    hub = hub_for(alice)
    hub.create_repo("acme/empty", kind="dataset")
    said = {
        "acme/data@staging": "`acme/data` has no alias `staging` (its aliases: `prod`).",
        "acme/data@7": "`acme/data` has no version 7 (latest is 1).",
        f"acme/data@sha256:{'0' * 64}": f"`acme/data` has no version `sha256:{'0' * 64}`.",
        "acme/empty@latest": "`acme/empty` has no versions yet.",
        "acme/empty@prod": "`acme/empty` has no versions yet.",
    }
    for ref, message in said.items():
        with pytest.raises(pefthub.NotFound) as info:
            hub.version(ref)
        assert info.value.message == message, ref
    hub.delete_alias("acme/data", "prod")
    with pytest.raises(pefthub.NotFound) as info:
        hub.version("acme/data@prod")
    assert info.value.message == "`acme/data` has no alias `prod` (it has no aliases yet)."
