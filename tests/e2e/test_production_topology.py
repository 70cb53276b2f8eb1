"""The production topology on one machine, without Docker, and jobs routed by what each worker can run.

Every part is a process of its own on free ports: a PostgreSQL cluster, a Redis, moto's S3
server, the multi-process server (`pefthub-server serve --workers 2`), a `pefthub-worker` on
the `gpu` queue with CUDA declared absent (PEFTHUB_WORKER_CAPABILITIES, so the test means the
same on a machine that has a GPU) and one on the `cpu` queue. Then:

- a LoRA train job runs on the gpu worker and a merge job on the cpu worker (the job's
  ``worker`` names which claimed it);
- a `qlora` job waits queued with ``waiting_for: "a worker with CUDA and bitsandbytes"`` in
  the API, the CLI and its events (never sent to the gpu worker that cannot run it, no
  attempt used), and is claimed by the third worker, which declares CUDA and bitsandbytes
  by env, as soon as it connects. That worker has no real CUDA here: it trains the qlora
  job on bitsandbytes' CPU kernels, which this machine has, and the job succeeds;
- every line a worker logs while it runs a job carries the job's id.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from examples import tiny
from pefthub import Hub
from tests.fixtures.s3 import S3_CLIENT_KWARGS, s3_client
from tests.fixtures.services import (
    VENV_BIN,
    HubProcess,
    PostgresCluster,
    RedisServer,
    kill_group,
    service_env,
    start_worker,
    temp_folder,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("postgres"),
                       reason="run once, in the SQLite pass: it starts its own PostgreSQL"),
]

FAST = {"max_steps": 4, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 32, "r": 4}
NO_CUDA = {"cuda": False, "gpu_count": 0, "gpu_memory": [], "bitsandbytes": False}
FAKE_CUDA = {"cuda": True, "gpu_count": 1, "gpu_memory": [24 * 1024**3], "bitsandbytes": True}
WAITING = "a worker with CUDA and bitsandbytes"


@pytest.fixture
def topology(tmp_path, moto_server, tiny_base):
    pg_folder = temp_folder("pefthub-topology-pg-")
    started: list = []
    try:
        pg = PostgresCluster(pg_folder)
        started.append(pg)
        redis = RedisServer(tmp_path)
        started.append(redis)
        bucket = f"pefthub-topology-{uuid.uuid4().hex[:12]}"
        s3_client(moto_server).create_bucket(Bucket=bucket)
        env = service_env(
            DATABASE_URL=pg.url, CELERY_BROKER_URL=redis.url(0), PEFTHUB_STORAGE=f"s3://{bucket}/hub",
            AWS_ENDPOINT_URL=moto_server, AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID=S3_CLIENT_KWARGS["aws_access_key_id"],
            AWS_SECRET_ACCESS_KEY=S3_CLIENT_KWARGS["aws_secret_access_key"],
            PEFTHUB_JOB_LEASE_SECONDS="8", PEFTHUB_WORKER_PRESENCE_SECONDS="15", OMP_NUM_THREADS="1",
        )
        hub = HubProcess(tmp_path / "hub", env=env, command=("serve", "--workers", "2"))
        started.append(hub)
        alice = hub.adduser("alice", "--team", "acme", "--role", "admin")  # adduser migrates; serve never does
        worker_token = hub.adduser("gpu-node", "--scope", "worker")
        hub.start()
        with Hub(url=hub.url, token=alice, cache_dir=tmp_path / "alice-cache", progress=False) as sdk:
            sdk.push(tiny_base, "acme/llama-tiny")
            sdk.push(tiny.make_dataset(tmp_path / "train.jsonl", rows=32), "acme/data")
            workers: list = []

            def worker(name: str, queues: str, capabilities: dict):
                proc = start_worker(url=hub.url, token=worker_token, broker=redis.url(0), cache=tmp_path / f"cache-{name}",
                                    log=tmp_path / f"worker-{name}.log", name=name, queues=queues,
                                    env={**env, "PEFTHUB_WORKER_CAPABILITIES": json.dumps(capabilities)})
                workers.append(proc)
                return proc

            try:
                yield sdk, worker, alice
            finally:
                for proc in workers:
                    kill_group(proc)
    finally:
        for service in reversed(started):
            service.close()
        shutil.rmtree(pg_folder, ignore_errors=True)


def _cli(sdk: Hub, token: str, *args: str) -> str:
    env = service_env(PEFTHUB_URL=sdk.url, PEFTHUB_TOKEN=token)
    done = subprocess.run([str(VENV_BIN / "pefthub"), *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _log(tmp_path, name: str) -> str:
    return (tmp_path / f"worker-{name}.log").read_text(errors="replace")


def test_jobs_run_on_the_workers_that_can_run_them(topology, tmp_path):
    sdk, worker, alice = topology
    worker("gpu", "gpu", NO_CUDA)
    worker("cpu", "cpu", NO_CUDA)

    train = sdk.train(base_model="acme/llama-tiny", dataset="acme/data", output="acme/bot", **FAST)
    qlora = sdk.train(base_model="acme/llama-tiny", dataset="acme/data", output="acme/qbot", method="qlora", **FAST)
    assert qlora.needs == {"cuda": True, "bitsandbytes": True} and qlora.waiting_for == WAITING
    done = train.wait(timeout=300)
    assert done.status == "succeeded" and done.worker == "gpu@faults" and done.attempt == 1

    merge = sdk.merge("acme/bot@1", output="acme/bot-merged")
    assert merge.queue == "cpu" and merge.needs["ram_bytes"] > 0
    merged = merge.wait(timeout=300)
    assert merged.status == "succeeded" and merged.worker == "cpu@faults"

    # the qlora job waited all along, its reason in the API, the CLI and (once) its events
    waiting = sdk.job(qlora.id)
    assert (waiting.status, waiting.attempt, waiting.waiting_for) == ("queued", 0, WAITING)
    assert (waiting.queue_position, waiting.queue_depth) == (1, 1)
    shown = _cli(sdk, alice, "jobs", "show", qlora.id)
    assert f"waiting   {WAITING}" in shown and "gpu (position 1 of 1)" in shown
    assert f"queued 1/1, waiting for {WAITING}" in _cli(sdk, alice, "jobs", "ls", "--status", "queued")
    statuses = [e.data for e in waiting.events() if e.type == "status"]
    assert statuses == [{"status": "queued", "waiting_for": WAITING}]
    assert qlora.id not in _log(tmp_path, "gpu")  # never sent to the worker that cannot run it

    worker("cuda", "gpu", FAKE_CUDA)  # a worker that can run it connects: its hello gets it the job
    ran = sdk.job(qlora.id).wait(timeout=300)
    assert ran.status == "succeeded" and ran.worker == "cuda@faults" and ran.attempt == 1
    assert ran.result.metadata["lineage"]["method"] == "qlora"
    logs = [e.data["message"] for e in sdk.job(qlora.id).events() if e.type == "log"]
    assert any("worker cuda@faults can run the job" in m for m in logs), logs

    # while a worker runs a job, each line it logs names the job
    for name, job_id, says in (("gpu", train.id, "training lora"), ("cpu", merge.id, "merging 1 adapter"),
                               ("cuda", qlora.id, "training qlora")):
        lines = [line for line in _log(tmp_path, name).splitlines() if says in line or "pushing" in line]
        assert lines and all(f"[job {job_id}]" in line for line in lines), _log(tmp_path, name)[-3000:]
