"""`pefthub-server up` heals: it restarts its embedded worker, never leaves it orphaned, and re-sends lost jobs.

Each test runs the real `pefthub-server up` in a process of its own (its own data dir,
SQLite, blobs and embedded broker, a free port) and the real embedded `pefthub-worker`
it starts, training with peft; the tests kill them with real signals. Linux only: the
processes are found through /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from examples import tiny
from pefthub.errors import HubError
from tests.fixtures.services import free_port, pid_alive, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    # `up` here runs on its own SQLite and embedded broker whatever DATABASE_URL says, so the
    # PostgreSQL pass of `.ci/run` would only repeat the SQLite pass.
    pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres"),
                       reason="run once, in the SQLite pass: `up` here uses its own SQLite"),
]

BIN = Path(sys.executable).parent
FAST = {"max_steps": 10, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 64, "r": 4}


def _workers(data_dir: Path) -> dict[int, int]:
    """Every live `pefthub-worker` of the hub in ``data_dir``, wherever its parent went: {pid: parent pid}."""
    found, mark = {}, f"PEFTHUB_DATA_DIR={data_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"pefthub_worker.cli" not in (entry / "cmdline").read_bytes() \
                    or mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if pid_alive(int(entry.name)):
            found[int(entry.name)] = ppid
    return found


class Up:
    """One `pefthub-server up` on a data dir, with its log."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        self.data_dir, self.env, self.port = data_dir, env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"up-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([BIN / "pefthub-server", "up", "--port", str(self.port)], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        wait_until(self._ready, timeout=90, what=f"up to serve {self.url} (log: {self.log_path})", interval=0.1)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(f"{self.url}/api/v1/", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker(self, *, other_than: int | None = None, timeout: float = 30) -> int:
        """The pid of up's embedded worker (a new one, if ``other_than`` is given)."""
        def mine():
            pids = [pid for pid, ppid in _workers(self.data_dir).items() if ppid == self.proc.pid and pid != other_than]
            return pids[0] if pids else None
        return wait_until(mine, timeout=timeout, what=f"up's embedded worker (log:\n{self.log()})", interval=0.1)

    def adduser(self, *args: str) -> str:
        out = subprocess.run([BIN / "pefthub-server", "adduser", *args], env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def embedded_worker_tokens(self) -> list[tuple[int, str | None]]:
        with sqlite3.connect(self.data_dir / "db.sqlite3") as db:
            return db.execute("SELECT id, revoked_at FROM core_apitoken WHERE name = 'embedded worker' ORDER BY id").fetchall()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def start_up(tmp_path):
    """``start_up(data_dir=None, **env)``: a running `pefthub-server up`; everything it started is killed after."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "DATABASE_URL", "PEFTHUB_STORAGE")}
    env.update(PEFTHUB_JOB_LEASE_SECONDS="4", PEFTHUB_REAP_INTERVAL="1", PEFTHUB_REDISPATCH_SECONDS="3",
               PEFTHUB_WORKER_CACHE=str(tmp_path / "worker-cache"), OMP_NUM_THREADS="1",
               DJANGO_SECRET_KEY="test-only-secret-key-not-for-production-0123456789")
    ups: list[Up] = []

    def start(data_dir: Path | None = None, **extra: str) -> Up:
        data_dir = data_dir or tmp_path / "data"
        up = Up(data_dir, {**env, "PEFTHUB_DATA_DIR": str(data_dir), **extra})
        ups.append(up)
        up.wait_ready()
        return up

    yield start
    for up in ups:
        up.stop()
    for up in ups:  # a test that failed may leave one: never let it outlive the test
        for pid in _workers(up.data_dir):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hub_on(open_hub, tmp_path, tiny_base):
    """``hub_on(up)``: alice's SDK client on that hub, with the tiny base and a dataset pushed."""

    def make(up: Up):
        token = up.adduser("alice", "--team", "acme", "--role", "admin")
        hub = open_hub(url=up.url, token=token, cache_dir=tmp_path / "alice-cache")
        hub.push(tiny_base, "acme/llama-tiny")
        hub.push(tiny.make_dataset(tmp_path / "train.jsonl", rows=32), "acme/support-data")
        return hub

    return make


def _train(hub, output: str = "acme/bot"):
    return hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output=output, **FAST)


def test_up_restarts_its_worker_and_a_lost_message_is_sent_again(start_up, hub_on):
    up = start_up()
    first = up.worker()
    os.kill(first, signal.SIGKILL)
    second = up.worker(other_than=first, timeout=15)  # restarted after 1 s
    assert "exited with code -9; starting it again in 1 s" in up.log()
    hub = hub_on(up)
    assert _train(hub).wait(timeout=240).status == "succeeded"  # the restarted worker runs jobs

    # Lose a job's message: freeze the worker, submit, wipe the broker folder with the message in it.
    os.kill(second, signal.SIGSTOP)
    queue = up.data_dir / "broker" / "queue"
    job = _train(hub, "acme/bot2")
    wait_until(lambda: any(queue.iterdir()), timeout=10, what="the job's message in the embedded broker", interval=0.1)
    shutil.rmtree(up.data_dir / "broker")
    os.kill(second, signal.SIGCONT)  # its broker folder is gone: it dies, and up starts another
    up.worker(other_than=second, timeout=20)
    done = job.wait(timeout=240)
    assert done.status == "succeeded" and done.attempt == 1
    logs = [e["data"].get("message", "") for e in hub.request("GET", f"jobs/{job.id}/events")["events"]]
    assert any("sent it again" in m for m in logs), logs


def test_a_killed_up_takes_its_worker_along_and_the_next_up_revokes_its_token(start_up, tmp_path):
    first = start_up()
    worker = first.worker()
    (token_id, revoked), = first.embedded_worker_tokens()
    assert revoked is None
    os.kill(first.proc.pid, signal.SIGKILL)  # no cleanup code runs in up
    first.proc.wait()
    wait_until(lambda: not pid_alive(worker), timeout=5, what=f"worker {worker} to die with its parent", interval=0.1)

    second = start_up(first.data_dir)
    second.worker()
    tokens = second.embedded_worker_tokens()
    assert [t[0] for t in tokens if t[1] is None] == [tokens[-1][0]] and tokens[0][0] == token_id
    assert list(_workers(first.data_dir).values()) == [second.proc.pid]  # no orphan beside the new worker

    worker = second.worker()
    second.proc.send_signal(signal.SIGTERM)  # the polite way stops the worker too
    assert second.proc.wait(timeout=30) == 0
    assert not pid_alive(worker)


@pytest.fixture
def spare_redis():
    """A port where a Redis will run once the test starts it: ``(url, start)``."""
    port = free_port()
    procs = []

    def start():
        procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL))
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
                   == b"PONG", timeout=10, what="redis", interval=0.1)

    yield f"redis://127.0.0.1:{port}/0", start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_job_submitted_while_redis_is_down_runs_once_it_is_back(start_up, hub_on, spare_redis, tmp_path):
    url, start_redis = spare_redis
    up = start_up(CELERY_BROKER_URL=url)  # an external broker: up starts no worker
    hub = hub_on(up)
    job = _train(hub)  # the broker is down: the job is queued all the same
    assert job.status == "queued"
    start_redis()
    env = {**up.env, "PEFTHUB_URL": up.url, "PEFTHUB_TOKEN": up.adduser("gpu-node", "--scope", "worker"),
           "PEFTHUB_CACHE": str(tmp_path / "node-cache")}
    with open(tmp_path / "node.log", "wb") as log:
        node = subprocess.Popen([BIN / "pefthub-worker", "-Q", "gpu"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        done = job.wait(timeout=240)
    except (HubError, TimeoutError):
        raise AssertionError((tmp_path / "node.log").read_text() + up.log()) from None
    finally:
        node.kill()
        node.wait()
    assert done.status == "succeeded" and done.attempt == 1
