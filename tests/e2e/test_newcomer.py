"""What a newcomer meets: `./dev up`'s output, the commands it says to try next, and `pefthub-server` run from anywhere.

Everything runs as a user runs it, in fresh processes: `pefthub-server up` (what `./dev up`
starts, without its pip step), `python -m examples.quickstart` beside it with the same
PEFTHUB_DATA_DIR, then the printed next steps in a new shell (`env -i`, another folder, no
PEFTHUB_* set), and `pefthub-server adduser` from folders that hold no hub. Each test has a
HOME of its own: `up` records itself under ~/.local/state, where the server CLI looks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import running_hub
from tests.fixtures.services import HubProcess, service_env

ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a hub's liveness is read from /proc")
# these hubs run on their own SQLite whatever DATABASE_URL says: the PostgreSQL pass would repeat the SQLite one
sqlite_pass_only = pytest.mark.skipif(ON_POSTGRES, reason="run once, in the SQLite pass: `up` here uses its own SQLite")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: a whole token (phub_ and 43 URL-safe characters); the example shows 12 characters at most
FULL_TOKEN = re.compile(r"phub_[A-Za-z0-9_-]{20,}")
#: what `./dev up` printed before: Celery's banner, its root warning, kombu's, progress bars, library warnings
NOISE = ("-------------- celery@", "[tasks]", "[queues]", "SecurityWarning", "superuser privileges", "C_FORCE_ROOT",
         "No hostname was supplied", "it/s]", "Loading weights", "Writing model shards", "WARNING", "Warning:",
         "kernels-community")


def fresh_shell_env(home: Path, **extra: str) -> dict[str, str]:
    """A new login shell's environment: HOME and the system PATH, nothing of this test's (PEFTHUB_*, venv)."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}
    if os.environ.get("PYTHONPATH"):  # only a test harness sets it (to test a checkout the venv does not point at)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def server_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "pefthub-server"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def whoami(url: str, token: str) -> int:
    return requests.get(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


@pytest.mark.slow
@sqlite_pass_only
def test_dev_up_prints_next_steps_that_work_in_a_new_shell_and_nothing_to_hide(tmp_path):
    home, tmp, elsewhere = tmp_path / "home", tmp_path / "tmp", tmp_path / "elsewhere"
    for folder in (home, tmp, elsewhere):
        folder.mkdir()
    # what `./dev up` runs: the hub on the data dir it exports, then the example beside it
    hub = HubProcess(tmp_path / "data", env=service_env(HOME=str(home), TMPDIR=str(tmp)), worker=True).start()
    try:
        example = subprocess.run([sys.executable, "-m", "examples.quickstart", "--url", hub.url], cwd=ROOT,
                                 env={**hub.env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=600)
        said = example.stdout + example.stderr
        assert example.returncode == 0, said + hub.log_tail()
        # the example cleaned up after itself (torch keeps its per-user compile cache there, as everywhere)
        assert [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")] == []

        # the printed next steps, run as printed in a new shell from another folder
        block = said.split("Next, in a new shell", 1)[1].splitlines()[1:]
        commands = [line.strip() for line in block if line.startswith("  ")]
        assert commands[0] == f"source {BIN / 'activate'}"
        shell = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)], cwd=elsewhere,
                               env=fresh_shell_env(home), capture_output=True, text=True, timeout=300)
        assert shell.returncode == 0, f"{commands}\n{shell.stdout}\n{shell.stderr}\n{hub.log_tail()}"
        out = shell.stdout.splitlines()
        assert out[0] == "Logged in as you" and out[1] == "you"  # login, whoami
        assert any(line.split()[:1] == ["acme/support-bot"] for line in out)  # ls --kind adapter
        pulled = Path(next(line for line in out if line.startswith("/")))  # pull prints the folder
        assert out.count("acme/bot2@1") == 1  # train --wait prints the result
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # hf download == pefthub pull, bytes
            assert (elsewhere / "support-bot" / name).read_bytes() == (pulled / name).read_bytes()
        assert not (elsewhere / ".pefthub").exists()  # adduser found the hub's data, made none here
        assert "using the data of the hub running on" in shell.stderr
    finally:
        hub.close()
    logged = hub.log.read_text(errors="replace")
    assert not FULL_TOKEN.findall(said + logged + shell.stdout + shell.stderr)
    assert [n for n in NOISE if n in said + logged] == []
    # what a user needs is still said
    assert f"PEFT Hub on {hub.url}/" in logged
    for line in ("made alice (acme admin, write token phub_", "and bob (acme reader, read token phub_",
                 "acme/llama-tiny@1, acme/support-data@1", "result acme/support-bot@1 (alias prod)",
                 "bob's logits vs alice's hub.load(): max |diff| = 0", "merged logits vs adapter logits max |diff| ="):
        assert line in said


@sqlite_pass_only
def test_server_commands_find_the_running_hubs_data_or_say_what_to_set(tmp_path):
    home, elsewhere, empty = tmp_path / "home", tmp_path / "elsewhere", tmp_path / "empty"
    home.mkdir()
    elsewhere.mkdir()
    shell = fresh_shell_env(home)  # no PEFTHUB_DATA_DIR, no DATABASE_URL, a folder with no ./.pefthub

    # no hub ever ran for this user: refused, and nothing made here
    alone = server_cli("adduser", "carl", cwd=elsewhere, env=shell)
    assert alone.returncode == 2 and alone.stdout == ""
    assert f"no hub data in {elsewhere / '.pefthub'} and no hub is running" in alone.stderr
    assert "set PEFTHUB_DATA_DIR" in alone.stderr and "pefthub-server up" in alone.stderr

    one = HubProcess(tmp_path / "one", env=service_env(HOME=str(home))).start()
    two = None
    try:
        # from another folder: the running hub's data, and a token that hub takes
        made = server_cli("adduser", "carl", "--team", "acme", "--role", "read", cwd=elsewhere, env=shell)
        assert made.returncode == 0, made.stderr
        assert whoami(one.url, made.stdout.strip()) == 200
        assert f"using the data of the hub running on {one.url} (pid {one.proc.pid}): {one.data_dir}" in made.stderr
        # it says what it made (the role is not the token's scope)
        assert "new user carl, role read in team acme; token 'adduser' on stdout: scope write, never expires" \
            in made.stderr
        again = server_cli("adduser", "carl", "--scope", "read", "--expires-in-days", "7", cwd=elsewhere, env=shell)
        assert "existing user carl; token 'adduser' on stdout: scope read, expires in 7 days" in again.stderr

        # a data dir named explicitly that holds no hub: refused, naming the running hub's
        wrong = server_cli("adduser", "carl", cwd=elsewhere, env={**shell, "PEFTHUB_DATA_DIR": str(empty)})
        assert wrong.returncode == 2 and wrong.stdout == ""
        assert f"no hub database in PEFTHUB_DATA_DIR={empty}" in wrong.stderr
        assert f"PEFTHUB_DATA_DIR={one.data_dir}  (the hub on {one.url}" in wrong.stderr
        assert not empty.exists()

        # the running hub's data dir with another database than it uses: refused before any connection
        other_db = {**shell, "PEFTHUB_DATA_DIR": str(one.data_dir), "DATABASE_URL": "postgres://u@127.0.0.1:1/other"}
        mixed = server_cli("adduser", "carl", cwd=elsewhere, env=other_db)
        assert mixed.returncode == 2
        assert f"the hub on {one.url} uses {one.data_dir} with the database sqlite3 {one.data_dir / 'db.sqlite3'}" \
            in mixed.stderr and "but this command would use postgresql 127.0.0.1:1/other: unset DATABASE_URL" \
            in mixed.stderr

        # a second `up` (a second `./dev up`) on the same port: refused before it makes a database, naming the hub there
        second = tmp_path / "second"
        second.mkdir()
        taken = server_cli("up", "--port", str(one.port), "--no-worker", cwd=second, env=shell)
        assert taken.returncode == 1
        assert f"cannot listen on 127.0.0.1:{one.port}" in taken.stderr
        assert f"the hub on {one.url} (pid {one.proc.pid}, data dir {one.data_dir}) runs there" in taken.stderr
        assert not (second / ".pefthub" / "db.sqlite3").exists()

        # two hubs: which one is not guessed
        two = HubProcess(tmp_path / "two" / ".pefthub", env=service_env(HOME=str(home))).start()
        both = server_cli("adduser", "carl", cwd=elsewhere, env=shell)
        assert both.returncode == 2 and "2 hubs are running; say which with PEFTHUB_DATA_DIR" in both.stderr
        assert f"PEFTHUB_DATA_DIR={one.data_dir}  (the hub on {one.url}" in both.stderr
        assert f"PEFTHUB_DATA_DIR={two.data_dir}  (the hub on {two.url}" in both.stderr
        chosen = server_cli("adduser", "dora", cwd=elsewhere, env={**shell, "PEFTHUB_DATA_DIR": str(two.data_dir)})
        assert chosen.returncode == 0, chosen.stderr
        assert whoami(two.url, chosen.stdout.strip()) == 200 and whoami(one.url, chosen.stdout.strip()) == 401

        # in a folder holding a hub's ./.pefthub, that one, without a word while it runs there
        inside = server_cli("adduser", "erin", cwd=two.data_dir.parent, env=shell)
        assert inside.returncode == 0 and inside.stderr.startswith("new user erin;")
        assert whoami(two.url, inside.stdout.strip()) == 200

        # a hub that crashed leaves its record behind: a dead pid is not a running hub
        two.sigkill()
        back = server_cli("adduser", "carl", cwd=elsewhere, env=shell)
        assert back.returncode == 0 and whoami(one.url, back.stdout.strip()) == 200
        # its ./.pefthub is still used where it lies, with a note naming the hub that runs
        stale = server_cli("adduser", "erin", cwd=two.data_dir.parent, env=shell)
        assert stale.returncode == 0
        assert stale.stderr.startswith(f"note: using the hub data in {two.data_dir}; a running hub's is elsewhere:\n"
                                       f"  PEFTHUB_DATA_DIR={one.data_dir}  (the hub on {one.url}")

        # every hub stopped: refused, naming the data dir of the last one
        one.proc.send_signal(signal.SIGTERM)
        assert one.proc.wait(timeout=30) == 0
        stopped = server_cli("adduser", "carl", cwd=elsewhere, env=shell)
        assert stopped.returncode == 2
        assert f"the last hub (on {two.url}, pid {two.proc.pid}, stopped) used PEFTHUB_DATA_DIR={two.data_dir}" \
            in stopped.stderr
        assert not (elsewhere / ".pefthub").exists()
    finally:
        one.close()
        if two is not None:
            two.close()


@pytest.mark.skipif(not ON_POSTGRES, reason="a hub on PostgreSQL: the PostgreSQL pass")
def test_server_commands_find_a_postgresql_hub_by_its_database(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    with running_hub(tmp_path / "data", "--no-worker", env={"HOME": str(home)}) as hub:
        database_url = hub.env["DATABASE_URL"]
        # DATABASE_URL as the hub has it: its data dir comes from its record
        made = server_cli("adduser", "pat", cwd=elsewhere, env=fresh_shell_env(home, DATABASE_URL=database_url))
        assert made.returncode == 0, made.stderr
        assert whoami(hub.url, made.stdout.strip()) == 200
        assert f"using the data of the hub running on {hub.url}" in made.stderr
        # without it, the command would use a SQLite database of its own: refused, saying what to set
        bare = server_cli("adduser", "pat", cwd=elsewhere, env=fresh_shell_env(home))
        assert bare.returncode == 2 and bare.stdout == ""
        assert f"the hub on {hub.url} uses postgresql " in bare.stderr and "set DATABASE_URL as it has it" in bare.stderr
        assert not (elsewhere / ".pefthub").exists()
