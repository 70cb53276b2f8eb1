"""Hugging Face tools pointed at the hub: ``hub.hf_env()``, ``pefthub env``, and
``pull --hf-cache`` filling the standard Hugging Face cache.

``pull_to_hf_cache`` runs the real ``huggingface_hub.snapshot_download`` against the
hub's real ``/hf`` API (model info, tree, resolve), through the proxy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pefthub import Hub, HubConnectionError, NotFound
from pefthub.cli import main
from pefthub.hf import hf_revision

from .proxy import Reply
from .state import sha, tree

pytest.importorskip("huggingface_hub")

#: variables that would steer huggingface_hub away from what a test sets up
HF_VARS = ("HF_ENDPOINT", "HF_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
           "HUGGINGFACE_HUB_CACHE")
#: the model card the hub's /hf API adds to every repository it serves
CARD = "README.md"


def commit_of(version) -> str:
    return version.digest_hex[:40]


@pytest.fixture
def hf_hub(seed, monkeypatch):
    """``acme/bot`` version 1 (`old`) and version 2 (`prod`, with a nested file), adapters on the tiny base.

    Returns ``(version 1's files, version 2's files, version 1, version 2)``."""
    for name in HF_VARS:
        monkeypatch.delenv(name, raising=False)
    seed.base()
    v1_files = seed.adapter_files(variant=1)
    v2_files = {**seed.adapter_files(variant=2), "nested/notes.md": b"# notes\n"}
    v1 = seed.push("acme/bot", v1_files, kind="adapter", base_model="acme/llama-tiny", aliases=["old"])
    v2 = seed.push("acme/bot", v2_files, kind="adapter", aliases=["prod"])
    return v1_files, v2_files, v1, v2


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env.update(extra)
    return env


# -- revisions and hf_env -------------------------------------------------------------------
def test_hub_revisions_map_to_hugging_face_revisions():
    digest = "ab" * 32
    assert hf_revision("acme/bot") == hf_revision("acme/bot@latest") == "main"
    assert hf_revision("acme/bot@3") == "3" and hf_revision("acme/bot@prod") == "prod"
    assert hf_revision(f"acme/bot@sha256:{digest.upper()}") == digest[:40]


def test_hf_env_points_at_the_hf_api_and_never_leaks_a_huggingface_token():
    # Xet off: huggingface_hub would upload through it (hf_xet is installed with it); the hub speaks LFS
    assert Hub("http://hub:8000/", "tok-1").hf_env() == {"HF_ENDPOINT": "http://hub:8000/hf", "HF_TOKEN": "tok-1",
                                                         "HF_HUB_DISABLE_XET": "1"}
    # no hub token: huggingface_hub must not send the user's own HF token to the hub
    assert Hub("http://hub:8000").hf_env() == {"HF_ENDPOINT": "http://hub:8000/hf", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
                                               "HF_HUB_DISABLE_XET": "1"}


def _eval_in_sh(**env: str) -> list[str]:
    script = ('eval "$("$PY" -m pefthub env)" && printf "%s\\n" "$PEFTHUB_URL" "$HF_ENDPOINT" '
              '"${HF_TOKEN-<unset>}" "${HF_HUB_DISABLE_IMPLICIT_TOKEN-<unset>}"')
    done = subprocess.run(["sh", "-c", script], env=child_env(PY=sys.executable, **env), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_pefthub_env_is_evaluable_by_sh():
    token = "tok-'quoted' $HOME `x` \\ end"  # quoting must survive anything a token could hold
    lines = _eval_in_sh(PEFTHUB_URL="http://hub.example:8000/", PEFTHUB_TOKEN=token,
                        HF_HUB_DISABLE_IMPLICIT_TOKEN="1")  # left over from a tokenless eval
    assert lines == ["http://hub.example:8000", "http://hub.example:8000/hf", token, "<unset>"]
    # without a hub token a huggingface.co token in the shell is cleared and kept from being used
    lines = _eval_in_sh(PEFTHUB_URL="http://hub.example:8000", HF_TOKEN="hf_personal")
    assert lines == ["http://hub.example:8000", "http://hub.example:8000/hf", "<unset>", "1"]


def test_pefthub_env_shells_json_and_no_token(capsys, monkeypatch):
    monkeypatch.setenv("PEFTHUB_URL", "http://hub:8000")
    monkeypatch.setenv("PEFTHUB_TOKEN", "tok-'1'")

    def env(*args: str) -> str:
        assert main(["env", *args]) == 0
        return capsys.readouterr().out

    assert env() == ("export PEFTHUB_URL=http://hub:8000\nexport HF_ENDPOINT=http://hub:8000/hf\nexport HF_HUB_DISABLE_XET=1\n"
                     "export HF_TOKEN='tok-'\"'\"'1'\"'\"''\nunset HF_HUB_DISABLE_IMPLICIT_TOKEN\n")
    assert env("--shell", "fish") == ("set -gx PEFTHUB_URL 'http://hub:8000'\nset -gx HF_ENDPOINT 'http://hub:8000/hf'\n"
                                      "set -gx HF_HUB_DISABLE_XET '1'\n"
                                      "set -gx HF_TOKEN 'tok-\\'1\\''\nset -e HF_HUB_DISABLE_IMPLICIT_TOKEN\n")
    assert env("--shell", "powershell") == (
        "$Env:PEFTHUB_URL = 'http://hub:8000'\n$Env:HF_ENDPOINT = 'http://hub:8000/hf'\n"
        "$Env:HF_HUB_DISABLE_XET = '1'\n$Env:HF_TOKEN = 'tok-''1'''\n"
        "Remove-Item Env:HF_HUB_DISABLE_IMPLICIT_TOKEN -ErrorAction SilentlyContinue\n")
    assert json.loads(env("--shell", "json")) == {"PEFTHUB_URL": "http://hub:8000", "HF_ENDPOINT": "http://hub:8000/hf",
                                                  "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "tok-'1'", "HF_HUB_DISABLE_IMPLICIT_TOKEN": None}
    out = env("--no-token")
    assert "HF_TOKEN" not in out.replace("HF_HUB_DISABLE_IMPLICIT_TOKEN", "") and "tok-" not in out
    assert main(["env", "--shell", "tcsh"]) == 2


# -- pull --hf-cache -------------------------------------------------------------------------------
def test_pull_to_hf_cache_fills_the_standard_cache_for_offline_loading(make_hub, hf_hub, proxy, alice, tmp_path):
    v1_files, v2_files, v1, v2 = hf_hub
    cache = tmp_path / "hf" / "hub"
    path = make_hub().pull_to_hf_cache("acme/bot@prod", cache_dir=cache)

    repo = cache / "models--acme--bot"
    assert path == repo / "snapshots" / commit_of(v2)
    files = tree(path)
    assert set(files) == {*v2_files, CARD} and {p: files[p] for p in v2_files} == v2_files
    assert (repo / "refs" / "prod").read_text() == commit_of(v2)
    for data in v2_files.values():
        assert (repo / "blobs" / sha(data)).read_bytes() == data  # blobs named by the ETag, the sha256
    hf_requests = proxy.requests(prefix="/hf/")
    assert hf_requests and all(s.header("Authorization") == f"Bearer {alice.token}" for s in hf_requests)

    # other revisions land in the same cache: a number, the default, a commit
    assert make_hub().pull_to_hf_cache("acme/bot@1", cache_dir=cache).name == commit_of(v1)
    assert make_hub().pull_to_hf_cache("acme/bot", cache_dir=cache) == path
    assert (repo / "refs" / "main").read_text() == commit_of(v2)
    assert make_hub().pull_to_hf_cache(f"acme/bot@{v2.digest}", cache_dir=cache) == path

    # a fresh process with HF_HUB_OFFLINE=1 and no server address finds everything
    script = (
        "import sys\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        "print(snapshot_download('acme/bot', revision='prod'))\n"
        "print(snapshot_download('acme/bot'))\n"
        "print(hf_hub_download('acme/bot', 'adapter_config.json', revision='1'))\n"
        f"print(hf_hub_download('acme/bot', 'nested/notes.md', revision='{commit_of(v2)}'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=child_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache)))
    assert done.returncode == 0, done.stderr
    prod, main_, old_config, notes = (Path(line) for line in done.stdout.splitlines())
    assert prod == main_ == path
    assert old_config.read_bytes() == v1_files["adapter_config.json"] and notes.read_bytes() == v2_files["nested/notes.md"]


def test_pull_to_hf_cache_passes_the_hub_as_endpoint_and_never_a_huggingface_token(make_hub, monkeypatch, tmp_path):
    import huggingface_hub

    calls: list[tuple[tuple, dict]] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, **kw: calls.append((a, kw)) or str(tmp_path / "snap"))
    hub = make_hub(url="http://hub:8000", token=None)
    assert hub.pull_to_hf_cache(f"acme/bot@sha256:{'c' * 64}") == tmp_path / "snap"
    (args, kwargs), = calls
    assert args == ("acme/bot",)
    assert kwargs["revision"] == "c" * 40 and kwargs["endpoint"] == "http://hub:8000/hf"
    assert kwargs["token"] is False and kwargs["cache_dir"] is None  # False: not even the saved HF token
    assert kwargs["tqdm_class"](total=1).disable  # progress=False reaches huggingface_hub's bars too


def test_pull_hf_cache_cli_plumbing(capsys, monkeypatch, tmp_path):
    import huggingface_hub

    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **kw: calls.append(kw) or "/snap")
    monkeypatch.setenv("PEFTHUB_URL", "http://hub:8000")
    monkeypatch.setenv("PEFTHUB_TOKEN", "tok-alice")
    assert main(["pull", "acme/bot@prod", "--hf-cache"]) == 0
    assert capsys.readouterr().out == "/snap\n"
    assert main(["pull", "acme/bot@3", "--hf-home", str(tmp_path / "hfhome")]) == 0  # --hf-home implies --hf-cache
    first, second = calls
    assert (first["revision"], first["token"], first["cache_dir"]) == ("prod", "tok-alice", None)
    assert (second["revision"], second["cache_dir"]) == ("3", str(tmp_path / "hfhome" / "hub"))

    for extra in (["--local-dir", str(tmp_path / "x")], ["--peft-version", "0.13"]):
        assert main(["pull", "acme/bot", "--hf-cache", *extra]) == 2
        assert "--hf-cache" in capsys.readouterr().err
    assert len(calls) == 2


def test_cli_pull_hf_cache_in_a_fresh_process_uses_hf_home(hf_hub, proxy, alice, tmp_path):
    home = tmp_path / "hfhome"
    done = subprocess.run([sys.executable, "-m", "pefthub", "pull", "acme/bot@old", "--hf-cache"],
                          capture_output=True, text=True, timeout=120,
                          env=child_env(PEFTHUB_URL=proxy.url, PEFTHUB_TOKEN=alice.token, HF_HOME=str(home),
                                        PEFTHUB_DISABLE_PROGRESS_BARS="1"))
    assert done.returncode == 0, done.stderr
    v1 = hf_hub[2]
    assert Path(done.stdout.strip()) == home / "hub" / "models--acme--bot" / "snapshots" / commit_of(v1)
    assert (home / "hub" / "models--acme--bot" / "refs" / "old").read_text() == commit_of(v1)


def test_pull_to_hf_cache_without_huggingface_hub_names_the_extra(make_hub, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install 'pefthub\[hf\]'"):
        make_hub().pull_to_hf_cache("acme/bot")
    assert main(["pull", "acme/bot", "--hf-cache"]) == 1
    assert "pip install 'pefthub[hf]'" in capsys.readouterr().err


@pytest.mark.usefixtures("hf_hub")
def test_hugging_face_errors_become_the_sdks_typed_errors(make_hub, carol, proxy, tmp_path, capsys, monkeypatch):
    with pytest.raises(NotFound) as info:  # a private repo is RepoNotFound to an outsider
        make_hub(token=carol.token).pull_to_hf_cache("acme/bot", cache_dir=tmp_path / "hf")
    assert (info.value.status, info.value.code) == (404, "RepoNotFound") and "acme/bot" in str(info.value)
    with pytest.raises(NotFound) as info:
        make_hub().pull_to_hf_cache("acme/bot@nope", cache_dir=tmp_path / "hf")
    assert (info.value.status, info.value.code) == (404, "RevisionNotFound")
    with pytest.raises(HubConnectionError, match="could not be reached"):
        make_hub(url=f"http://127.0.0.1:{free_port()}").pull_to_hf_cache("acme/bot", cache_dir=tmp_path / "hf")

    monkeypatch.setenv("PEFTHUB_URL", proxy.url)
    monkeypatch.setenv("PEFTHUB_TOKEN", carol.token)
    assert main(["pull", "acme/bot", "--hf-home", str(tmp_path / "home")]) == 1
    assert capsys.readouterr().err.startswith("error: 404 RepoNotFound: acme/bot: ")

    # huggingface.co answers an outsider 401 with RepoNotFound: NotFound all the same
    proxy.reply("GET", "/hf/.*", Reply(401, {"error": "Repository Not Found"}, {"X-Error-Code": "RepoNotFound"}),
                times=None)
    with pytest.raises(NotFound) as info:
        make_hub(token=carol.token).pull_to_hf_cache("acme/bot", cache_dir=tmp_path / "hf")
    assert (info.value.status, info.value.code) == (401, "RepoNotFound") and "acme/bot" in str(info.value)
    assert main(["pull", "acme/bot", "--hf-home", str(tmp_path / "home")]) == 1
    assert capsys.readouterr().err.startswith("error: 401 RepoNotFound: acme/bot: ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
