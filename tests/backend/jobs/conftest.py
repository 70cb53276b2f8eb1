"""Jobs fixtures: alice's dataset beside her base, a worker node's token, and helpers to submit and claim."""

from __future__ import annotations

import json

import pytest

from tests.conftest import api_push, worker_token


@pytest.fixture
def acme_data(alice, api, tmp_path):
    """`acme/data` (private dataset) pushed by alice: version 1."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(8)) + "\n")
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "data", "kind": "dataset"}, format="json")
    assert api_push(client, "acme/data", folder).status_code == 201


@pytest.fixture
def worker(db):
    """A worker node's token: it claims, and the claim's job token does the rest."""
    return worker_token("worker-1")


def train_spec(**overrides):
    spec = {"type": "train", "base_model": "acme/llama-tiny", "dataset": "acme/data", "output": "acme/bot",
            "method": "lora", "hyperparameters": {"r": 4, "max_steps": 2}}
    spec.update(overrides)
    return spec


def submit(client, spec=None, **headers):
    return client.post("/api/v1/jobs", spec or train_spec(), format="json", **headers)


def claim(api, worker, job_id):
    return api(worker).post(f"/api/v1/jobs/{job_id}/claim", {"worker": "w"}, format="json").json()
