"""One grammar: the same references get one answer from the SDK parser, the REST paths and the /hf paths.

Good references resolve everywhere (200); bad ones are refused everywhere (a RefError in the SDK,
a 4xx from both APIs, never a 5xx), for the same reason, worded by pefthub.protocol.refs.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests

import pefthub
from pefthub.protocol.refs import name_problem, namespace_problem, revision_problem

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
