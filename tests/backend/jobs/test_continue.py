"""``continue_from`` at submit: the adapter resolved as the caller may read it, pinned, and checked against the job.

Real peft adapters saved on the tiny base and pushed through the API; every mismatch is a
400 naming the field, both sides and the fix, and creates no job.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from examples import tiny
from pefthub_server.jobs.models import Job
from tests.backend.jobs.conftest import claim as _claim
from tests.backend.jobs.conftest import submit as _submit
from tests.backend.jobs.conftest import train_spec as _train_spec
from tests.conftest import api_push

LORA = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
CONFIGS = {
    "bot": LORA,
    "dora-bot": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", use_dora=True),
    "ia3-bot": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                         task_type="CAUSAL_LM"),
    "prompt-bot": PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
}


@pytest.fixture(scope="module")
def adapter_folders(tiny_base, tmp_path_factory):
    """name -> folder of a peft adapter of that config on the tiny base, saved by peft."""
    root = tmp_path_factory.mktemp("parents")
    out = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base), config).save_pretrained(root / name)
        out[name] = root / name
    return out


def _push_adapter(client, repo: str, folder, base: str = "acme/llama-tiny"):
    ns, _, name = repo.partition("/")
    client.post("/api/v1/repos", {"namespace": ns, "name": name, "kind": "adapter", "base_model": base}, format="json")
    response = api_push(client, repo, folder)
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def parents(alice, api, acme_base, acme_data, adapter_folders):
    """alice's adapters acme/bot (LoRA r=4, alpha 12, q_proj+v_proj), acme/dora-bot, acme/ia3-bot, acme/prompt-bot."""
    client = api(alice.token)
    return {name: _push_adapter(client, f"acme/{name}", folder) for name, folder in adapter_folders.items()}


def _continued(**overrides):
    return _train_spec(**{"continue_from": "acme/bot@1", "hyperparameters": {"max_steps": 2}, **overrides})


def test_continue_from_pins_the_adapter_and_takes_its_shape(alice, api, parents, worker):
    response = _submit(api(alice.token), _continued())
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["inputs"]["continue_from"] == {"repo": "acme/bot", "number": 1, "digest": parents["bot"]["digest"]}
    hp = job["spec"]["hyperparameters"]
    assert (hp["r"], hp["lora_alpha"], sorted(hp["target_modules"])) == (4, 12, ["q_proj", "v_proj"])  # the adapter's
    assert hp["max_steps"] == 2 and job["spec"]["continue_from"] == "acme/bot@1"
    # the job token reads the pinned adapter, by number and by digest, and nothing else of it
    token = _claim(api, worker, job["id"])["token"]
    runner = api(token)
    assert runner.get("/api/v1/repos/acme/bot/versions/1").status_code == 200
    assert runner.get(f"/api/v1/repos/acme/bot/versions/{parents['bot']['digest']}").status_code == 200
    assert runner.get("/api/v1/repos/acme/dora-bot/versions/1").status_code == 403


@pytest.mark.parametrize(("method", "hyperparameters", "parent"), [
    ("lora", {"r": 4, "lora_alpha": 12, "target_modules": ["v_proj", "q_proj"]}, "bot"),  # the same, given: fine
    ("qlora", {}, "bot"),  # a QLoRA adapter is a plain LoRA file: either continues the other
    ("dora", {"lora_dropout": 0.0}, "dora-bot"),
    ("ia3", {}, "ia3-bot"),
    ("prompt_tuning", {"num_virtual_tokens": 4}, "prompt-bot"),
])
def test_a_matching_method_continues(alice, api, parents, method, hyperparameters, parent):
    response = _submit(api(alice.token), _continued(method=method, continue_from=f"acme/{parent}",
                                                    hyperparameters={"max_steps": 1, **hyperparameters}))
    assert response.status_code == 201, response.content
    assert response.json()["inputs"]["continue_from"]["repo"] == f"acme/{parent}"
    if parent == "prompt-bot":
        assert response.json()["spec"]["hyperparameters"]["num_virtual_tokens"] == 4


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"method": "ia3"}, "method", "`acme/bot@1`: it is a LORA adapter, so continue it with method 'lora' or 'qlora'"),
    ({"method": "dora"}, "method", "continue it with method 'lora' or 'qlora'"),
    ({"method": "lora", "continue_from": "acme/dora-bot"}, "method", "DoRA adapter (LORA with use_dora), so continue it "
                                                                      "with method 'dora'"),
    ({"method": "qlora", "continue_from": "acme/dora-bot"}, "method", "with method 'dora'"),
    ({"method": "prefix_tuning", "continue_from": "acme/prompt-bot"}, "method", "with method 'prompt_tuning'"),
    ({"method": "lora", "continue_from": "acme/ia3-bot"}, "method", "an IA3 adapter, so continue it with method 'ia3'"),
    ({"hyperparameters": {"r": 8}}, "hyperparameters.r", "hyperparameters.r is 8 but continue_from `acme/bot@1` has r 4"),
    ({"hyperparameters": {"lora_alpha": 8}}, "hyperparameters.lora_alpha", "is 8 but continue_from `acme/bot@1` has "
                                                                           "lora_alpha 12; a continued adapter keeps"),
    ({"hyperparameters": {"r": 4, "target_modules": ["q_proj"]}}, "hyperparameters.target_modules",
     'has target_modules ["'),
    ({"method": "ia3", "continue_from": "acme/ia3-bot", "hyperparameters": {"target_modules": ["k_proj", "v_proj"]}},
     "hyperparameters.target_modules", "leave it out (it takes"),
    ({"method": "prompt_tuning", "continue_from": "acme/prompt-bot", "hyperparameters": {"num_virtual_tokens": 8}},
     "hyperparameters.num_virtual_tokens", "is 8 but continue_from `acme/prompt-bot@1` has num_virtual_tokens 4"),
    ({"continue_from": "acme/llama-tiny"}, "continue_from", "`acme/llama-tiny` is a model repository, not an adapter"),
    ({"continue_from": "acme/bot@7"}, "continue_from", "acme/bot"),
    ({"continue_from": "acme/bot@"}, "continue_from", "continue_from"),
])
def test_a_continuation_that_does_not_fit_is_a_400_naming_both_sides(alice, api, parents, overrides, field, words):
    response = _submit(api(alice.token), _continued(**overrides))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_spec" and error["detail"]["field"] == field and words in error["message"], error
    assert not Job.objects.exists()


def test_an_adapter_of_another_base_is_refused_naming_both(alice, api, parents, tiny_base):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "other-base", "kind": "model"}, format="json")
    assert api_push(client, "acme/other-base", tiny_base).status_code == 201
    response = _submit(client, _continued(base_model="acme/other-base"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["detail"]["field"] == "continue_from", error
    assert error["message"] == (
        "continue_from `acme/bot@1` is an adapter of base `acme/llama-tiny`, but this job trains on `acme/other-base@1`; "
        "continue it on its own base (base_model `acme/llama-tiny`) or train a fresh adapter on this one.")


def test_a_new_version_of_the_base_must_still_fit_the_adapter(alice, api, parents, tiny_base, tmp_path):
    client = api(alice.token)
    same_shapes = tmp_path / "same"
    shutil.copytree(tiny_base, same_shapes)
    (same_shapes / "README.md").write_text("v2: the same weights, a card\n")
    assert api_push(client, "acme/llama-tiny", same_shapes).json()["number"] == 2
    fits = _submit(client, _continued(base_model="acme/llama-tiny@2"))
    assert fits.status_code == 201, fits.content

    wider = tiny.make_tiny_llama(tmp_path / "wider", hidden_size=128)
    assert api_push(client, "acme/llama-tiny", wider).json()["number"] == 3
    response = _submit(client, _continued(base_model="acme/llama-tiny@3"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["detail"]["field"] == "continue_from" and error["detail"]["base"] == "acme/llama-tiny@3", error
    assert error["message"].startswith("continue_from `acme/bot@1` was trained on `acme/llama-tiny@1` and does not fit "
                                       "`acme/llama-tiny@3`: "), error
    assert "should be [r, 128]" in error["message"] and "base_model `acme/llama-tiny@1`" in error["message"]
    assert Job.objects.count() == 1


def test_an_unreadable_adapter_reads_as_a_missing_one(alice, carol, api, parents, acme_base, adapter_folders, tiny_base):
    # carol's private adapter, on a base of her own: to alice it does not exist
    outsider = api(carol.token)
    outsider.post("/api/v1/repos", {"namespace": "carol", "name": "llama-tiny", "kind": "model"}, format="json")
    assert api_push(outsider, "carol/llama-tiny", tiny_base).status_code == 201
    _push_adapter(outsider, "carol/secret", adapter_folders["bot"], base="carol/llama-tiny")
    client = api(alice.token)
    hidden = _submit(client, _continued(continue_from="carol/secret@1")).json()["error"]
    missing = _submit(client, _continued(continue_from="carol/nothing@1")).json()["error"]
    assert hidden["message"] == missing["message"].replace("carol/nothing", "carol/secret"), (hidden, missing)
    assert hidden["detail"] == missing["detail"] == {"field": "continue_from"}
    assert "not found" in hidden["message"]
    assert not Job.objects.exists()
