"""A small catalogue seen through /hf: alice's team acme, bob's team-mate rights, carol the outsider.

- acme/llama-tiny  model, private, 1 version
- acme/bot         adapter of it, public, 2 versions (v1 `prod`, v2 `staging`), README.md pushed with v2
- acme/secret      adapter of it, private, 1 version
- acme/empty       adapter, private, no version yet
- acme/data        dataset, private, 1 version
- carol/mine       adapter, carol's own private repository on her own base carol/base (model)
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import api_push

README = b"""---
license: apache-2.0
tags:
- chat
- peft
language: en
---

# Support bot

Answers support questions. Trained on our tickets.
"""


def create(client, ns: str, name: str, kind: str, **extra) -> None:
    response = client.post("/api/v1/repos", {"namespace": ns, "name": name, "kind": kind, **extra}, format="json")
    assert response.status_code == 201, response.content


def push(client, repo: str, folder, **commit) -> dict:
    response = api_push(client, repo, folder, **commit)
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def catalogue(alice, bob, carol, api, acme_base, tiny_adapter, tiny_base, tmp_path):
    adapter = tiny_adapter[0]
    client = api(alice.token)
    create(client, "acme", "bot", "adapter", base_model="acme/llama-tiny", visibility="public")
    push(client, "acme/bot", adapter, aliases=["prod"], message="First cut\n\nTrained 5 steps.")
    with_readme = tmp_path / "bot-v2"
    shutil.copytree(adapter, with_readme)
    (with_readme / "README.md").write_bytes(README)
    push(client, "acme/bot", with_readme, aliases=["staging"], message="Add a README")
    create(client, "acme", "secret", "adapter", base_model="acme/llama-tiny")
    push(client, "acme/secret", adapter)
    create(client, "acme", "empty", "adapter", base_model="acme/llama-tiny")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    create(client, "acme", "data", "dataset")
    push(client, "acme/data", data)
    theirs = api(carol.token)
    create(theirs, "carol", "base", "model")
    push(theirs, "carol/base", tiny_base)
    create(theirs, "carol", "mine", "adapter", base_model="carol/base")
    push(theirs, "carol/mine", adapter)
    return client
