"""The programs as a user runs them: `pefthub-server up` and `adduser`, then the `pefthub` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.services import free_port

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `pefthub-server up` process on the embedded defaults (SQLite, local blobs)."""
    data = tmp_path_factory.mktemp("server-data")
    # The embedded defaults: SQLite, local blobs, the filesystem broker and one embedded worker.
    drop = ("DATABASE_URL", "PEFTHUB_STORAGE", "DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PEFTHUB_DATA_DIR"] = str(data)
    port = free_port()
    with open(data / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([BIN / "pefthub-server", "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/api/v1/", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((data / "server.log").read_text())
        time.sleep(0.2)
    yield url, env
    proc.terminate()
    proc.wait(timeout=10)


def run(args, env, **kwargs):
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=120, **kwargs)


def test_adduser_prints_only_a_token(server):
    _, env = server
    first = run([BIN / "pefthub-server", "adduser", "erin", "--team", "lab", "--role", "admin"], env)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert first.stdout == token + "\n" and token.startswith("phub_")
    second = run([BIN / "pefthub-server", "adduser", "erin", "--scope", "read"], env)
    assert second.stdout.strip() != token  # a fresh token each time, same user
    bad = run([BIN / "pefthub-server", "adduser", "erin", "--role", "owner"], env)
    assert bad.returncode != 0 and bad.stdout == ""


def test_cli_push_pull_ls_info_alias(server, tiny_base, tiny_adapter, tmp_path):
    url, server_env = server
    token = run([BIN / "pefthub-server", "adduser", "alice", "--team", "acme", "--role", "admin"], server_env).stdout.strip()
    env = {**os.environ, "PEFTHUB_URL": url, "PEFTHUB_CONFIG_DIR": str(tmp_path / "config"),
           "PEFTHUB_CACHE": str(tmp_path / "cache"), "PEFTHUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("PEFTHUB_TOKEN", None)
    cli = BIN / "pefthub"

    login = run([cli, "login", "--token", token], env)
    assert login.returncode == 0 and "alice" in login.stdout, login.stderr
    assert run([cli, "whoami"], env).stdout.strip().startswith("alice")

    pushed = run([cli, "push", tiny_base, "acme/llama-tiny", "-m", "base"], env)
    assert pushed.returncode == 0, pushed.stderr
    adapter = tmp_path / "bot"
    shutil.copytree(tiny_adapter[0], adapter)
    pushed = run([cli, "push", adapter, "acme/bot", "--base-model", "acme/llama-tiny", "--alias", "prod"], env)
    assert pushed.returncode == 0 and "acme/bot@1" in pushed.stdout, pushed.stderr
    unchanged = run([cli, "push", adapter, "acme/bot"], env)
    assert "acme/bot@1" in unchanged.stdout and "unchanged" in unchanged.stdout.lower()

    pulled = run([cli, "pull", "acme/bot@prod"], env)
    assert pulled.returncode == 0, pulled.stderr
    path = Path(pulled.stdout.strip())
    assert (path / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()

    listed = json.loads(run([cli, "ls", "--kind", "adapter", "--json"], env).stdout)
    assert [r["id"] for r in listed] == ["acme/bot"] and listed[0]["base_model"] == "acme/llama-tiny"
    assert "acme/bot" in run([cli, "ls"], env).stdout
    info = json.loads(run([cli, "info", "acme/bot@prod", "--json"], env).stdout)
    assert info["number"] == 1 and {f["path"] for f in info["files"]} >= {"adapter_config.json", "adapter_model.safetensors"}

    (adapter / "README.md").write_text("v2\n")
    assert run([cli, "push", adapter, "acme/bot"], env).returncode == 0
    moved = run([cli, "alias", "acme/bot@2", "prod"], env)
    assert moved.returncode == 0, moved.stderr
    assert json.loads(run([cli, "info", "acme/bot@prod", "--json"], env).stdout)["number"] == 2

    missing = run([cli, "pull", "acme/nope"], env)
    assert missing.returncode == 1 and "error:" in missing.stderr and "not found" in missing.stderr.lower()
    no_alias = run([cli, "pull", "acme/bot@staging"], env)
    assert no_alias.returncode == 1 and "`acme/bot` has no alias `staging` (its aliases: `prod`)." in no_alias.stderr
    no_version = run([cli, "info", "acme/bot@9"], env)
    assert no_version.returncode == 1 and "`acme/bot` has no version 9 (latest is 2)." in no_version.stderr
    no_base = run([cli, "push", adapter, "acme/bot2"], env)  # an adapter whose config names a local path as its base
    assert no_base.returncode == 1 and "error: 400 base_model_required: acme/bot2 is an adapter" in no_base.stderr
    assert "add `--base-model acme/base`" in no_base.stderr
    refused = tmp_path / "pickled"
    refused.mkdir()
    (refused / "config.json").write_text("{}")
    (refused / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    bad = run([cli, "push", refused, "acme/pickled", "--kind", "model"], env)
    assert bad.returncode == 1 and "safetensors" in bad.stderr


def test_embedded_worker_trains_and_merges_through_the_cli(server, tiny_base, tmp_path):
    """`pefthub-server up` alone (no Redis) runs jobs: its embedded worker shares the filesystem broker."""
    from examples import tiny

    url, server_env = server
    token = run([BIN / "pefthub-server", "adduser", "tess", "--team", "lab2", "--role", "admin"], server_env).stdout.strip()
    env = {**os.environ, "PEFTHUB_URL": url, "PEFTHUB_TOKEN": token, "PEFTHUB_CACHE": str(tmp_path / "cache"),
           "PEFTHUB_CONFIG_DIR": str(tmp_path / "config"), "PEFTHUB_DISABLE_PROGRESS_BARS": "1"}
    cli = BIN / "pefthub"
    assert run([cli, "push", tiny_base, "lab2/llama-tiny"], env).returncode == 0
    assert run([cli, "push", tiny.make_dataset(tmp_path / "d.jsonl", rows=32), "lab2/data"], env).returncode == 0
    trained = run([cli, "train", "--base-model", "lab2/llama-tiny", "--dataset", "lab2/data", "--output", "lab2/bot",
                   "--method", "dora", "--set", "r=4", "--set", "max_steps=5", "--set", "max_seq_length=32", "--wait"], env)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    job_id, result = trained.stdout.split()
    assert result == "lab2/bot@1"
    logs = run([cli, "jobs", "logs", job_id[:12]], env).stdout  # the short id quickstart prints works too
    assert "step 5/5" in logs and "succeeded" in logs
    shown = json.loads(run([cli, "jobs", "show", job_id[:12], "--json"], env).stdout)
    assert shown["id"] == job_id
    assert shown["status"] == "succeeded" and shown["spec"]["method"] == "dora"
    merged = run([cli, "merge", "lab2/bot@1", "--output", "lab2/bot-merged", "--wait"], env)
    assert merged.returncode == 0 and merged.stdout.split()[-1] == "lab2/bot-merged@1", merged.stderr
    refused = run([cli, "train", "--base-model", "lab2/llama-tiny", "--dataset", "lab2/data", "--output", "lab2/x",
                   "--method", "lora", "--set", "r=0"], env)
    assert refused.returncode == 1 and "hyperparameters.r" in refused.stderr
    typo = run([cli, "train", "--base-model", "lab2/llama-tiny", "--dataset", "lab2/data", "--output", "lab2/x",
                "--set", "learnin_rate=2e-4"], env)
    assert (typo.returncode, typo.stderr) == (1, "error: unknown hyperparameter `learnin_rate`; did you mean `learning_rate`?\n")


def test_cli_says_what_a_newcomer_misses_no_token_no_hub(server, tmp_path):
    url, server_env = server
    token = run([BIN / "pefthub-server", "adduser", "nina", "--team", "nina-lab", "--role", "admin"], server_env).stdout.strip()
    cli = BIN / "pefthub"
    base = {**os.environ, "PEFTHUB_CONFIG_DIR": str(tmp_path / "config"), "PEFTHUB_CACHE": str(tmp_path / "cache"),
            "PEFTHUB_DISABLE_PROGRESS_BARS": "1", "PEFTHUB_URL": url}
    base.pop("PEFTHUB_TOKEN", None)
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hi"}\n')
    with_token = {**base, "PEFTHUB_TOKEN": token}
    assert run([cli, "push", data, "nina-lab/open", "--visibility", "public"], with_token).returncode == 0
    assert run([cli, "push", data, "nina-lab/closed"], with_token).returncode == 0

    # no token: the commands that need one say how to get one; ls says it shows public repositories only
    whoami = run([cli, "whoami"], base)
    assert (whoami.returncode, whoami.stdout, whoami.stderr) == (
        1, "", "error: `pefthub whoami` needs a token: run `pefthub login` or set PEFTHUB_TOKEN.\n")
    listed = run([cli, "ls", "--json"], base)
    assert listed.returncode == 0 and [r["id"] for r in json.loads(listed.stdout)] == ["nina-lab/open"]
    assert listed.stderr == ("note: no token, so only public repositories are listed "
                             "(run `pefthub login` or set PEFTHUB_TOKEN to see yours)\n")

    # no hub at the URL: said after the first refused connection, with how to start one
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    down = run([cli, "ls"], {**with_token, "PEFTHUB_URL": closed})
    elapsed = time.monotonic() - started
    assert (down.returncode, down.stdout) == (1, "")
    assert down.stderr == (f"error: no hub answers at {closed} (connection refused). Start one with `pefthub-server up`, "
                           "or point PEFTHUB_URL (or `pefthub login --url`) at the hub you mean.\n")
    assert elapsed < 5, elapsed  # a fresh process: interpreter start-up included; was 3 to 11.5 s of retries
