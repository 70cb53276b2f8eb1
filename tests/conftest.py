"""Shared fixtures: the people (alice, bob, carol), API clients, storage backends, tiny models.

alice administers team `acme`; bob is an `acme` member with the `write` role; carol is
signed in but belongs to no team. Every endpoint is tested for carol.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples import tiny


@dataclass
class Person:
    user: object
    token: str  # a `write` token

    @property
    def username(self) -> str:
        return self.user.username

    def new_token(self, scope: str = "read", **kwargs) -> str:
        from pefthub_server.core.tokens import token_create

        return token_create(user=self.user, scope=scope, **kwargs)[1]


def _person(username: str, *, team: str | None = None, role: str = "write") -> Person:
    from pefthub_server.core.tokens import token_create
    from pefthub_server.registry.teams import user_ensure

    user = user_ensure(username=username, team=team, role=role)
    return Person(user=user, token=token_create(user=user, scope="write")[1])


def worker_token(username: str = "gpu-node") -> str:
    """A `worker` token, made as an operator makes one (`adduser NAME --scope worker`: the user becomes staff)."""
    from pefthub_server.core.tokens import operator_token_create

    return operator_token_create(user=_person(username).user, name="worker", scope="worker")[1]


@pytest.fixture
def alice(db):
    return _person("alice", team="acme", role="admin")


@pytest.fixture
def bob(db, alice):
    return _person("bob", team="acme", role="write")


@pytest.fixture
def carol(db):
    return _person("carol")


@pytest.fixture
def open_hub():
    """``open_hub(url=..., token=..., cache_dir=..., ...)``: an SDK client, without progress bars, closed after the test."""
    from pefthub import Hub

    hubs = []

    def make(**kwargs) -> Hub:
        hub = Hub(**{"progress": False, **kwargs})
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()


@pytest.fixture
def api():
    """An API client factory: ``api(token)`` or ``api()`` for anonymous."""
    from rest_framework.test import APIClient

    def make(token: str | None = None) -> APIClient:
        client = APIClient()
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


@pytest.fixture(autouse=True)
def empty_cache():
    """Each test starts with empty caches: no failed-authentication counts or list pages left by another test."""
    from django.core.cache import caches

    for cache in caches.all():
        cache.clear()


@pytest.fixture(autouse=True)
def local_storage(settings, tmp_path):
    """Each test gets a fresh local blob directory (the default backend)."""
    from pefthub_server.registry.storage import get_blob_store

    settings.PEFTHUB_STORAGE = f"file://{tmp_path / 'blobs'}"
    get_blob_store.cache_clear()
    yield tmp_path / "blobs"
    get_blob_store.cache_clear()


@pytest.fixture
def s3_storage(settings, s3_bucket, monkeypatch):
    """Switch the hub to the S3 backend on moto's server (a separate process, over HTTP)."""
    from pefthub_server.registry.storage import get_blob_store

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings.PEFTHUB_STORAGE = f"s3://{bucket}/hub"
    get_blob_store.cache_clear()
    yield endpoint, bucket
    get_blob_store.cache_clear()


# --- tiny models (built once per session) -------------------------------------------


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return tiny.make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama-tiny")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_base, tmp_path_factory):
    """(folder, logits) of a LoRA adapter trained 5 steps on the tiny base."""
    out = tmp_path_factory.mktemp("adapter") / "support-bot"
    logits = tiny.train_lora(tiny_base, out, steps=5)
    return out, logits


@pytest.fixture(scope="session")
def lora_config_json(tmp_path_factory) -> dict:
    """An adapter_config.json as the installed peft writes it."""
    peft = pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("lora")
    peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                    use_dora=True).save_pretrained(out)
    return json.loads((out / "adapter_config.json").read_text())


# --- pushing through the API client (in-process) ------------------------------------


def file_specs(folder: Path) -> list[dict]:
    return [
        {"path": p.relative_to(folder).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file()
    ]


def api_push(client, repo: str, folder: Path, **commit):
    """Negotiate, upload what is missing, commit; returns the commit response."""
    specs = file_specs(folder)
    negotiated = client.post(f"/api/v1/repos/{repo}/uploads", {"files": specs}, format="json")
    if negotiated.status_code != 200:
        return negotiated
    by_sha = {s["sha256"]: folder / s["path"] for s in specs}
    for item in negotiated.json()["missing"]:
        put = client.generic("PUT", item["upload"]["url"], by_sha[item["sha256"]].read_bytes(),
                             content_type="application/octet-stream")
        assert put.status_code == 201, put.content
    return client.post(f"/api/v1/repos/{repo}/versions", {"files": specs, **commit}, format="json")


@pytest.fixture
def acme_base(alice, api, tiny_base):
    """`acme/llama-tiny` pushed by alice (private): version 1."""
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "llama-tiny", "kind": "model"}, format="json").status_code == 201
    response = api_push(client, "acme/llama-tiny", tiny_base)
    assert response.status_code == 201, response.content
    return response.json()


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path
