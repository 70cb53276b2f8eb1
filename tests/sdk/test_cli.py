from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pefthub import __version__
from pefthub.cli import main

from .fakes import TOKEN, sha, tree

FILES = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"\x01" * 4096}


@pytest.fixture
def env(monkeypatch, fake_hub, tmp_path):
    monkeypatch.setenv("PEFTHUB_URL", fake_hub.url)
    monkeypatch.setenv("PEFTHUB_TOKEN", TOKEN)
    monkeypatch.setenv("PEFTHUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTHUB_DISABLE_PROGRESS_BARS", "1")
    return fake_hub


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def folder(root: Path) -> Path:
    root.mkdir()
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    return root


def test_login_checks_the_token_and_writes_a_private_config(capsys, fake_hub, tmp_path):
    code, out, err = run(capsys, "login", "--url", fake_hub.url, "--token", TOKEN)
    assert (code, out, err) == (0, "Logged in as alice\n", "")
    path = tmp_path / "config" / "config.json"
    assert json.loads(path.read_text()) == {"url": fake_hub.url, "token": TOKEN}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # later commands use the saved login without any env
    code, out, _ = run(capsys, "whoami")
    assert code == 0 and out.splitlines()[0] == "alice"


def test_login_prompts_on_a_tty(capsys, fake_hub, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    asked = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or TOKEN)
    code, out, _ = run(capsys, "login", "--url", fake_hub.url)
    assert code == 0 and out == "Logged in as alice\n" and asked and fake_hub.url in asked[0]
    assert json.loads((tmp_path / "config" / "config.json").read_text())["token"] == TOKEN


def test_login_reads_a_piped_token(capsys, fake_hub, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))
    assert run(capsys, "login", "--url", fake_hub.url)[:2] == (0, "Logged in as alice\n")


def test_login_with_a_bad_token_saves_nothing(capsys, fake_hub, tmp_path):
    code, out, err = run(capsys, "login", "--url", fake_hub.url, "--token", "wrong")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "401" in err and "authentication_failed" in err
    assert not (tmp_path / "config" / "config.json").exists()


def test_push_pull_info_alias_ls(capsys, env, tmp_path):
    src = folder(tmp_path / "out")

    code, out, _ = run(capsys, "push", str(src), "acme/bot", "--base-model", "acme/llama-tiny",
                       "--alias", "staging", "--alias", "canary", "-m", "first", "--visibility", "internal")
    v1 = env.versions["acme/bot"][0]
    assert code == 0 and out == f"acme/bot@1 {v1['digest']} created\n"
    assert env.aliases["acme/bot"] == {"staging": 1, "canary": 1}
    assert env.repos["acme/bot"]["visibility"] == "internal"

    code, out, _ = run(capsys, "push", str(src), "acme/bot")
    assert code == 0 and out == f"acme/bot@1 {v1['digest']} unchanged\n"

    code, out, _ = run(capsys, "pull", "acme/bot@staging")
    path = Path(out.strip())
    assert code == 0 and path.name == v1["digest"].split(":")[1] and tree(path) == FILES

    code, out, _ = run(capsys, "pull", "acme/bot", "--local-dir", str(tmp_path / "copy"))
    assert code == 0 and out == f"{tmp_path / 'copy'}\n" and tree(tmp_path / "copy") == FILES

    code, out, _ = run(capsys, "alias", "acme/bot@1", "prod")
    assert code == 0 and out == "acme/bot@prod -> acme/bot@1\n" and env.aliases["acme/bot"]["prod"] == 1
    code, out, _ = run(capsys, "alias", "--delete", "acme/bot", "canary")
    assert code == 0 and "canary" not in env.aliases["acme/bot"]

    code, out, _ = run(capsys, "info", "acme/bot@prod")
    assert code == 0 and out.startswith(f"acme/bot@1  {v1['digest']}")
    for name, data in FILES.items():
        assert any(line.startswith(name) and sha(data)[:16] in line for line in out.splitlines())

    code, out, _ = run(capsys, "info", "acme/bot", "--json")
    info = json.loads(out)
    assert info["repo"]["id"] == "acme/bot" and [v["number"] for v in info["versions"]] == [1]

    code, out, _ = run(capsys, "info", "acme/bot")
    assert code == 0 and out.splitlines()[0] == "acme/bot" and "VERSION" in out

    code, out, _ = run(capsys, "ls", "--kind", "adapter")
    header, row = out.splitlines()
    assert header.split() == ["REPO", "KIND", "VISIBILITY", "BASE", "MODEL", "PEFT", "LATEST"]
    assert row.split() == ["acme/bot", "adapter", "internal", "acme/llama-tiny", "LORA", "1"]


def test_ls_follows_pages_and_prints_json(capsys, env):
    for i in range(7):
        env.add_version(f"acme/r{i}", {"train.jsonl": b"{}\n"}, kind="dataset")
    code, out, _ = run(capsys, "ls", "--json")
    assert code == 0 and sorted(r["id"] for r in json.loads(out)) == [f"acme/r{i}" for i in range(7)]


def test_errors_exit_1_and_usage_errors_exit_2(capsys, env, tmp_path):
    code, out, err = run(capsys, "info", "acme/missing")
    assert (code, out) == (1, "") and err.startswith("error: 404 not_found")

    code, _, err = run(capsys, "pull", "not a ref")
    assert code == 2 and err.startswith("error: invalid reference")

    code, _, err = run(capsys, "push", str(tmp_path / "nope"), "acme/bot")
    assert code == 1 and "no such file" in err

    assert run(capsys, "alias", "acme/bot", "prod")[0] == 2  # which version?
    assert run(capsys)[0] == 2
    assert run(capsys, "push", "only-a-path")[0] == 2
    assert run(capsys, "ls", "--kind", "spaceship")[0] == 2


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "pefthub", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"pefthub {__version__}"
    done = subprocess.run([sys.executable, "-m", "pefthub", "bogus"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr
