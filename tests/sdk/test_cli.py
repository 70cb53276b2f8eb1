"""The ``pefthub`` CLI (login, push, pull, info, alias, ls) against the real hub, through the proxy."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
from pathlib import Path

from pefthub import __version__

from .state import sha, tree, write_tree


def test_login_checks_the_token_and_writes_a_private_config(cli, proxy, alice, tmp_path):
    code, out, err = cli("login", "--url", proxy.url, "--token", alice.token)
    assert (code, out, err) == (0, "Logged in as alice\n", "")
    path = tmp_path / "config" / "config.json"
    assert json.loads(path.read_text()) == {"url": proxy.url, "token": alice.token}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # later commands use the saved login without any env
    code, out, _ = cli("whoami")
    assert code == 0 and out.splitlines()[0] == "alice"


def test_login_prompts_on_a_tty(cli, proxy, alice, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    asked = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or alice.token)
    code, out, _ = cli("login", "--url", proxy.url)
    assert code == 0 and out == "Logged in as alice\n" and asked and proxy.url in asked[0]
    assert json.loads((tmp_path / "config" / "config.json").read_text())["token"] == alice.token


def test_login_reads_a_piped_token(cli, proxy, alice, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(alice.token + "\n"))
    assert cli("login", "--url", proxy.url)[:2] == (0, "Logged in as alice\n")


def test_login_with_a_bad_token_saves_nothing(cli, proxy, tmp_path):
    code, out, err = cli("login", "--url", proxy.url, "--token", "wrong")
    assert code == 1 and out == ""
    assert err.startswith(f"error: {proxy.url} did not accept this token: ")
    assert not (tmp_path / "config" / "config.json").exists()


def aliases(seed, repo: str) -> dict[str, int]:
    return {a["name"]: a["version"] for a in seed.hub.aliases(repo)}


def test_push_pull_info_alias_ls(cli, env, tmp_path):
    env.base()
    files = env.adapter_files()
    src = write_tree(tmp_path / "out", files)

    code, out, _ = cli("push", str(src), "acme/bot", "--base-model", "acme/llama-tiny",
                       "--alias", "staging", "--alias", "canary", "-m", "first", "--visibility", "internal")
    v1 = env.hub.version("acme/bot@1")
    assert code == 0 and out == f"acme/bot@1 {v1.digest} created\n"
    assert aliases(env, "acme/bot") == {"latest": 1, "staging": 1, "canary": 1}
    assert env.hub.repo("acme/bot").visibility == "internal"

    code, out, _ = cli("push", str(src), "acme/bot")
    assert code == 0 and out == f"acme/bot@1 {v1.digest} unchanged\n"

    code, out, _ = cli("pull", "acme/bot@staging")
    path = Path(out.strip())
    assert code == 0 and path.name == v1.digest_hex and tree(path) == files

    code, out, _ = cli("pull", "acme/bot", "--local-dir", str(tmp_path / "copy"))
    assert code == 0 and out == f"{tmp_path / 'copy'}\n" and tree(tmp_path / "copy") == files

    code, out, _ = cli("alias", "acme/bot@1", "prod")
    assert code == 0 and out == "acme/bot@prod -> acme/bot@1\n" and aliases(env, "acme/bot")["prod"] == 1
    code, out, _ = cli("alias", "--delete", "acme/bot", "canary")
    assert code == 0 and "canary" not in aliases(env, "acme/bot")

    code, out, _ = cli("info", "acme/bot@prod")
    assert code == 0 and out.startswith(f"acme/bot@1  {v1.digest}")
    for name, data in files.items():
        assert any(line.startswith(name) and sha(data)[:16] in line for line in out.splitlines())

    code, out, _ = cli("info", "acme/bot", "--json")
    info = json.loads(out)
    assert info["repo"]["id"] == "acme/bot" and [v["number"] for v in info["versions"]] == [1]

    code, out, _ = cli("info", "acme/bot")
    assert code == 0 and out.splitlines()[0] == "acme/bot" and "VERSION" in out

    code, out, _ = cli("ls", "--kind", "adapter")
    header, row = out.splitlines()
    assert header.split() == ["REPO", "KIND", "VISIBILITY", "BASE", "MODEL", "PEFT", "LATEST"]
    assert row.split() == ["acme/bot", "adapter", "internal", "acme/llama-tiny", "LORA", "1"]


def test_ls_follows_pages_and_prints_json(cli, env):
    for i in range(7):
        env.push(f"acme/r{i}", {"train.jsonl": b"{}\n"})
    code, out, _ = cli("ls", "--json")
    assert code == 0 and sorted(r["id"] for r in json.loads(out)) == [f"acme/r{i}" for i in range(7)]


def test_errors_exit_1_and_usage_errors_exit_2(cli, env, tmp_path):
    code, out, err = cli("info", "acme/missing")
    assert (code, out) == (1, "") and err.startswith("error: 404 not_found")

    code, _, err = cli("pull", "not a ref")
    assert code == 2 and err.startswith("error: invalid reference")

    code, _, err = cli("push", str(tmp_path / "nope"), "acme/bot")
    assert code == 1 and "no such file" in err

    assert cli("alias", "acme/bot", "prod")[0] == 2  # which version?
    assert cli()[0] == 2
    assert cli("push", "only-a-path")[0] == 2
    assert cli("ls", "--kind", "spaceship")[0] == 2


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "pefthub", "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"pefthub {__version__}"
    done = subprocess.run([sys.executable, "-m", "pefthub", "bogus"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr
