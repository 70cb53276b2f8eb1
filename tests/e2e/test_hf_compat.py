"""Hugging Face tools load from the hub with only HF_ENDPOINT and HF_TOKEN set, in fresh processes.

Against a live test server (where settings and storage backends can be switched per test) and
against `pefthub-server up`, the server users run: test servers strip HEAD bodies, which hid a
keep-alive fault that broke transformers, peft and datasets through /hf.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch
import yaml

from examples import tiny
from pefthub_server.core import http as hub_http
from tests.e2e.conftest import running_hub

SCRIPT = Path(__file__).with_name("hf_client_script.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def backend(request):
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    return request.param


@pytest.fixture
def published(alice, hub_for, tiny_base, tmp_path):
    """acme/x with three versions (3 is `prod`), acme/llama-tiny, and a merged model acme/merged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hub = hub_for(alice)
    hub.push(tiny_base, "acme/llama-tiny")
    expected = {}
    for i in (1, 2, 3):
        folder = tmp_path / f"x{i}"
        expected[i] = tiny.train_lora(tiny_base, folder, steps=2 + i, seed=i)
        hub.push(folder, "acme/x", base_model="acme/llama-tiny", aliases=["prod"] if i == 3 else ())
    merged_dir = tmp_path / "merged"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "x3").merge_and_unload()
    model.save_pretrained(merged_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, merged_dir / name)
    hub.push(merged_dir, "acme/merged")
    with torch.no_grad():
        expected["merged"] = model.eval()(input_ids=tiny.sample_input()).logits
    return hub, expected


def _run(env_extra, out, args, hf_home):
    """hf_client_script.py ARGS in a fresh process with only HF_* settings; what it found."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DJANGO_"))}
    env.update({"HF_HOME": str(hf_home), "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_TELEMETRY": "1", **env_extra})
    result = subprocess.run([sys.executable, str(SCRIPT), str(out), *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture
def served_bytes(monkeypatch):
    """Counts responses in which the hub itself streams file bytes (observed, not replaced)."""
    count = {"n": 0}
    for cls in ("FileResponse", "StreamingHttpResponse"):
        original = getattr(hub_http, cls)

        def counting(*args, _original=original, **kwargs):
            count["n"] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(hub_http, cls, counting)
    return count


def test_hf_tools_load_everything_and_then_offline(backend, published, alice, live_server, tmp_path, served_bytes):
    hub, expected = published
    commit = hub.version("acme/x@2").digest.removeprefix("sha256:")[:40]
    revisions = ["main", "prod", "3", commit]
    env = {"HF_ENDPOINT": f"{live_server.url}/hf", "HF_TOKEN": alice.token}
    online = _run(env, tmp_path / "online.pt", ["revisions", *revisions], tmp_path / "hf-home")
    for rev, version in (("main", 3), ("prod", 3), ("3", 3), (commit, 2)):
        facts = online[rev]
        assert torch.equal(facts["peft"], expected[version]), rev
        assert torch.equal(facts["auto_peft"], expected[version]), rev
        assert facts["sha"] == hub.version(f"acme/x@{version}").digest.removeprefix("sha256:")[:40]
        assert facts["exists"] == [True, False]
        assert facts["files"] == facts["siblings"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert "base_model:adapter:acme/llama-tiny" in facts["tags"] and facts["library_name"] == "peft"
        assert '"base_model_name_or_path": "acme/llama-tiny"' in facts["config"]
    assert torch.equal(online["merged"], expected["merged"])
    if backend == "s3":
        assert served_bytes["n"] == 0  # every byte came from S3 through presigned redirects

    dead = "http://127.0.0.1:9"  # nothing listens: the hub is gone
    offline = _run({"HF_ENDPOINT": dead, "HF_TOKEN": alice.token, "HF_HUB_OFFLINE": "1"}, tmp_path / "offline.pt",
                   ["revisions", *revisions], tmp_path / "hf-home")
    for rev, version in (("main", 3), ("prod", 3), ("3", 3), (commit, 2)):
        assert torch.equal(offline[rev]["peft"], expected[version]), rev
    assert offline["tokenizer"] == online["tokenizer"]


def test_private_repo_is_repo_not_found_to_outsiders_and_anonymous(published, carol, live_server):
    for headers in ({"Authorization": f"Bearer {carol.token}"}, {}):
        for url in ("/hf/api/models/acme/x", "/hf/api/models/acme/x/tree/main", "/hf/acme/x/resolve/main/adapter_config.json"):
            response = requests.get(live_server.url + url, headers=headers, allow_redirects=False)
            assert response.status_code == 404 and response.headers["X-Error-Code"] == "RepoNotFound", (url, headers)
    bad = requests.get(live_server.url + "/hf/api/models/acme/x", headers={"Authorization": "Bearer phub_nope"})
    assert bad.status_code == 401


def test_public_repo_loads_anonymously(published, alice, live_server, tmp_path):
    hub, expected = published
    for repo in ("acme/x", "acme/llama-tiny", "acme/merged"):
        hub.update_repo(repo, visibility="public")
    result = _run({"HF_ENDPOINT": f"{live_server.url}/hf"}, tmp_path / "anon.pt", ["revisions", "prod"],
                  tmp_path / "anon-home")
    assert torch.equal(result["prod"]["peft"], expected[3])


def test_protocol_details(published, alice, live_server):
    hub, _ = published
    h = {"Authorization": f"Bearer {alice.token}"}
    url = live_server.url + "/hf"
    head = requests.head(f"{url}/acme/x/resolve/prod/adapter_model.safetensors", headers=h)
    version = hub.version("acme/x@prod")
    weights = next(f for f in version.files if f.path == "adapter_model.safetensors")
    assert head.headers["X-Repo-Commit"] == version.digest.removeprefix("sha256:")[:40]
    assert head.headers["ETag"] == f'"{weights.sha256}"' and int(head.headers["Content-Length"]) == weights.size
    assert not any(k.lower().startswith("x-xet") for k in head.headers)
    part = requests.get(f"{url}/acme/x/resolve/prod/adapter_model.safetensors", headers={**h, "Range": "bytes=0-7"})
    assert part.status_code == 206 and len(part.content) == 8
    missing = requests.head(f"{url}/acme/x/resolve/prod/pytorch_model.bin", headers=h)
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    norev = requests.get(f"{url}/api/models/acme/x/revision/nope", headers=h)
    assert norev.status_code == 404 and norev.headers["X-Error-Code"] == "RevisionNotFound"
    card = requests.get(f"{url}/acme/x/resolve/3/README.md", headers=h).text
    front = yaml.safe_load(card.split("---\n")[1])  # peft's own README.md, with the hub's keys merged in
    assert {k: front[k] for k in ("library_name", "base_model", "base_model_relation")} == \
        {"library_name": "peft", "base_model": "acme/llama-tiny", "base_model_relation": "adapter"}
    assert "# Model Card for Model ID" in card.split("## PEFT Hub")[0]
    assert "## PEFT Hub" in card and "### Serving" in card and "AutoPeftModelForCausalLM" in card


def test_tree_pages_with_link_headers(published, alice, live_server, settings):
    settings.PEFTHUB_HF_TREE_PAGE_SIZE = 2
    h = {"Authorization": f"Bearer {alice.token}"}
    url = f"{live_server.url}/hf/api/models/acme/merged/tree/main?recursive=true"
    paths = []
    while url:
        response = requests.get(url, headers=h)
        assert response.status_code == 200
        paths += [item["path"] for item in response.json()]
        url = response.links.get("next", {}).get("url")
    assert paths == sorted(paths) and len(paths) == len(set(paths)) >= 5
    assert "model.safetensors" in paths and "README.md" in paths


@pytest.mark.usefixtures("published")
def test_revision_suffix_serves_a_config_an_older_peft_loads(alice, live_server, tmp_path):
    """`revision="prod+peft-0.13"`: stock HF tools get an adapter config without the keys peft 0.13 lacks."""
    import json

    from huggingface_hub import hf_hub_download, snapshot_download

    from pefthub import peft_compat

    h = {"Authorization": f"Bearer {alice.token}"}
    url = f"{live_server.url}/hf"
    original = json.loads(requests.get(f"{url}/acme/x/resolve/prod/adapter_config.json", headers=h).content)
    response = requests.get(f"{url}/acme/x/resolve/prod%2Bpeft-0.13/adapter_config.json", headers=h)
    adjusted = json.loads(response.content)
    dropped = sorted(set(original) - set(adjusted))
    assert dropped and response.headers["X-PeftHub-Dropped-Keys"] == ",".join(dropped)
    assert set(adjusted) <= peft_compat.known_fields("LORA", "0.13") | peft_compat.NEVER_DROPPED
    assert {k: original[k] for k in adjusted} == adjusted
    plain_commit = requests.head(f"{url}/acme/x/resolve/prod/adapter_config.json", headers=h).headers["X-Repo-Commit"]
    compat_commit = response.headers["X-Repo-Commit"]
    assert compat_commit != plain_commit and len(compat_commit) == 40
    # through huggingface_hub, in this process (endpoint passed explicitly), both revisions side by side in one cache
    cache = tmp_path / "hf"
    compat_path = hf_hub_download("acme/x", "adapter_config.json", revision="prod+peft-0.13", endpoint=url,
                                  token=alice.token, cache_dir=cache)
    plain_path = hf_hub_download("acme/x", "adapter_config.json", revision="prod", endpoint=url, token=alice.token,
                                 cache_dir=cache)
    assert json.loads(Path(compat_path).read_text()) == adjusted and json.loads(Path(plain_path).read_text()) == original
    snap = snapshot_download("acme/x", revision=compat_commit, endpoint=url, token=alice.token, cache_dir=cache)
    assert json.loads((Path(snap) / "adapter_config.json").read_text()) == adjusted
    bad = requests.get(f"{url}/api/models/acme/x/revision/prod%2Bpeft-0.1", headers=h)
    assert bad.status_code == 404 and bad.headers["X-Error-Code"] == "RevisionNotFound"


# --- through `pefthub-server up`, the server users run ------------------------------------

RUNS = 3  # fresh processes (and caches) per check: one keep-alive fault in any of them fails the test


#: a README.md pushed with acme/bot@2: the hub keeps it and merges its own front matter in
USER_README = """---
license: apache-2.0
tags:
- chat
---

# Support bot

Answers support questions.
"""


@pytest.fixture(scope="module")
def up_hub(tmp_path_factory, tiny_base):
    """`pefthub-server up` with acme/llama-tiny, acme/adapter (no tokenizer files), acme/merged (with its tokenizer),
    the dataset acme/data, the public adapter acme/bot (1 `prod`, then 2 with a README of its own) and the private
    acme/secret, pushed with the SDK by alice (made with `pefthub-server adduser`); carol's private dataset carol/data;
    what loading them locally gives."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    from pefthub import Hub

    work = tmp_path_factory.mktemp("up-hub")
    adapter, merged, data, bot = work / "adapter", work / "merged", work / "data", work / "bot"
    tiny.train_lora(tiny_base, adapter, steps=4, seed=5)
    assert not list(adapter.glob("tokenizer*"))  # AutoPeftModel probes for one: the hub must say EntryNotFound
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter).merge_and_unload()
    model.save_pretrained(merged)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_base / name, merged / name)
    data.mkdir()
    tiny.make_dataset(data / "train.jsonl", rows=24)
    shutil.copytree(adapter, bot)
    (bot / "README.md").write_text(USER_README)
    x = tiny.sample_input()
    with torch.no_grad():
        expected = {
            "merged": model.eval()(input_ids=x).logits,
            "adapter": tiny.load_adapter_logits(tiny_base, adapter),
            "generated": pipeline("text-generation", model=str(merged))("the hub", max_new_tokens=8,
                                                                           do_sample=False)[0]["generated_text"],
            "rows": [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()],
        }
    with running_hub(work / "server", "--no-worker") as server:
        token = server.adduser("alice", "--team", "acme", "--role", "admin")
        with Hub(url=server.url, token=token, cache_dir=work / "cache", progress=False) as hub:
            hub.push(tiny_base, "acme/llama-tiny")
            hub.push(adapter, "acme/adapter", base_model="acme/llama-tiny")
            hub.push(merged, "acme/merged")
            hub.push(data, "acme/data", kind="dataset")
            hub.push(adapter, "acme/bot", base_model="acme/llama-tiny", aliases=["prod"], visibility="public",
                     message="First cut\n\nTrained 4 steps.")
            hub.push(bot, "acme/bot", message="Add a README")
            hub.push(adapter, "acme/secret", base_model="acme/llama-tiny")
            expected["bot"] = {n: hub.version(f"acme/bot@{n}") for n in (1, 2)}
        expected["carol"] = server.adduser("carol")
        with Hub(url=server.url, token=expected["carol"], cache_dir=work / "cache-carol", progress=False) as hub:
            hub.push(data, "carol/data", kind="dataset")
        yield server, token, expected


def test_pipeline_auto_peft_and_load_dataset_through_pefthub_server_up(up_hub, tmp_path):
    server, token, expected = up_hub
    env = {"HF_ENDPOINT": f"{server.url}/hf", "HF_TOKEN": token}
    for run in range(RUNS):
        found = _run(env, tmp_path / f"tools-{run}.pt", ["tools"], tmp_path / f"hf-home-{run}")
        assert found["generated"] == expected["generated"], run
        assert torch.equal(found["pipeline"], expected["merged"]), run
        assert torch.equal(found["auto_peft"], expected["adapter"]) and torch.equal(found["peft"], expected["adapter"])
        assert found["rows"] == expected["rows"], run
        assert found["snapshot"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert '"base_model_name_or_path": "acme/llama-tiny"' in found["config"]


#: what datasets 5.2's load_dataset("acme/data") sends to the hub from a cold cache (HF_DEBUG=1 logs it), in order;
#: (method, path, status, X-Error-Code or the content type's start). It also probes two hosts that are not the hub
#: (s3.amazonaws.com for a loading script, datasets-server.<host> for parquet): both fail fast and it goes on.
DATASET_PROBES = [
    ("HEAD", "datasets/acme/data/resolve/main/README.md", 200, "text/markdown"),
    ("GET", "datasets/acme/data/resolve/main/README.md", 200, "text/markdown"),
    ("HEAD", "datasets/acme/data/resolve/{commit}/data.py", 404, "EntryNotFound"),
    ("GET", "api/datasets/acme/data/revision/{commit}", 200, "application/json"),
    ("HEAD", "datasets/acme/data/resolve/{commit}/.huggingface.yaml", 404, "EntryNotFound"),
    ("GET", "api/datasets/acme/data/tree/{commit}/data?recursive=false&expand=false", 404, "EntryNotFound"),
    ("GET", "api/datasets/acme/data/tree/{commit}?recursive=false&expand=false", 200, "application/json"),
    ("HEAD", "datasets/acme/data/resolve/{commit}/dataset_infos.json", 404, "EntryNotFound"),
    ("HEAD", "datasets/acme/data/resolve/{commit}/train.jsonl", 200, "application/octet-stream"),
    ("GET", "datasets/acme/data/resolve/{commit}/train.jsonl", 200, "application/octet-stream"),
]


def _walk_dataset_probes(url: str, token: str) -> None:
    """The probe sequence on one keep-alive connection: each answer as datasets needs it, none a 5xx."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        commit = session.get(f"{url}/hf/api/datasets/acme/data").json()["sha"]
        for method, path, status, what in DATASET_PROBES:
            response = session.request(method, f"{url}/hf/{path.format(commit=commit)}", allow_redirects=False)
            got = response.headers.get("X-Error-Code") if status == 404 else response.headers["Content-Type"]
            assert response.status_code == status and got.startswith(what), (method, path, response.status_code, got)


def test_listings_refs_commits_whoami_and_cold_load_dataset_through_pefthub_server_up(up_hub, tmp_path):
    """HfApi's reads besides files and `hf auth whoami`, in fresh processes; load_dataset 10 times from a cold cache."""
    server, token, expected = up_hub
    env = {"HF_ENDPOINT": f"{server.url}/hf", "HF_TOKEN": token}
    found = _run(env, tmp_path / "reads.pt", ["reads", expected["carol"]], tmp_path / "hf-home")
    acme = ["acme/adapter", "acme/bot", "acme/llama-tiny", "acme/merged", "acme/secret"]
    assert found["models"] == found["paged"] == acme
    assert found["search"] == ["acme/bot"]
    assert found["adapters_of_base"] == ["acme/adapter", "acme/bot", "acme/secret"]
    assert found["newest_two"] == ["acme/secret", "acme/bot"]
    assert found["datasets"] == ["acme/data"]
    assert found["other_models"] == found["other_adapters_of_base"] == ["acme/bot"]  # none of acme's private ones
    assert found["other_datasets"] == ["carol/data"]  # and alice sees none of carol's

    v1, v2 = (expected["bot"][n] for n in (1, 2))
    commit1, commit2 = (v.digest.removeprefix("sha256:")[:40] for v in (v1, v2))
    assert found["refs"] == {"branches": [("main", "refs/heads/main", commit2), ("dev", "refs/heads/dev", commit1)],
                             "tags": [("prod", "refs/tags/prod", commit1)]}
    assert found["commits"] == [(commit2, "Add a README", "", ["alice"]), (commit1, "First cut", "Trained 4 steps.", ["alice"])]
    assert found["commits_from_prod"] == [commit1]

    files = found["files"]
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    for f in v2.files:
        if f.path != "README.md":  # the card is the hub's merge of it
            assert files[f.path][:2] == (f.size, f.sha256[:40]), f.path
    weights = next(f for f in v2.files if f.path == "adapter_model.safetensors")
    assert files["adapter_model.safetensors"][2] == weights.sha256
    assert files["README.md"][0] == len(found["card"].encode())
    config1 = next(f for f in v1.files if f.path == "adapter_config.json")
    assert found["fs"] == (config1.size, ["acme/bot/README.md", "acme/bot/adapter_config.json", "acme/bot/adapter_model.safetensors"])
    card = found["card"]
    assert card.index("# Support bot\n\nAnswers support questions.") < card.index("## PEFT Hub")
    assert found["card_data"] == {"license": "apache-2.0", "tags": ["chat", "pefthub", "peft", "lora"], "library_name": "peft",
                                  "base_model": "acme/llama-tiny", "base_model_relation": "adapter"}
    assert "load_dataset" in found["dataset_card"] and "AutoModel" not in found["dataset_card"]

    assert found["whoami"]["name"] == "alice" and [o["name"] for o in found["whoami"]["orgs"]] == ["acme"]
    assert found["loads"] == [expected["rows"]] * 10
    _walk_dataset_probes(server.url, token)

    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DJANGO_"))}
    cli_env.update({"HF_HOME": str(tmp_path / "cli-home"), **env})
    whoami = subprocess.run([str(Path(sys.executable).parent / "hf"), "auth", "whoami"], env=cli_env, capture_output=True,
                            text=True, timeout=120)
    assert whoami.returncode == 0 and "alice" in whoami.stdout and "acme" in whoami.stdout, whoami.stdout + whoami.stderr
    cli_env.pop("HF_TOKEN")
    anonymous = subprocess.run([str(Path(sys.executable).parent / "hf"), "auth", "whoami"], env=cli_env,
                               capture_output=True, text=True, timeout=120)
    assert anonymous.returncode != 0 and "alice" not in anonymous.stdout
