"""MLflow's model registry for bench/registry.py: its throwaway venv, its tracking server, its catalogue seeded by REST.

MLflow runs from its own venv (made once, reused while it holds ``VERSION``), never from the hub's: its pins
(SQLAlchemy, Flask, protobuf...) are not ours to take. Everything the bench asks of it goes over its REST API
(`/api/2.0/mlflow/...`), which is what `MlflowClient` sends, without the client's own per-call overhead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

# The newest MLflow whose whole dependency set installs here: 3.18.0 is listed, but the mlflow-tracing 3.18.0 it pins
# is not published yet.
VERSION = "3.17.2"
VENV = Path(os.environ.get("PEFTHUB_BENCH_MLFLOW_VENV", "/tmp/pefthub-bench-mlflow"))
API = "/api/2.0/mlflow"


def ensure_venv() -> Path:
    """The `mlflow` executable of a venv holding MLflow ``VERSION`` with the PostgreSQL driver and boto3."""
    python, mlflow = VENV / "bin" / "python", VENV / "bin" / "mlflow"
    check = [str(python), "-c", "import mlflow, psycopg2, boto3; print(mlflow.__version__)"]
    if python.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() == VERSION:
        return mlflow
    print(f"installing MLflow {VERSION} into {VENV} (once; about a minute) ...", flush=True)
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"mlflow=={VERSION}", "psycopg2-binary", "boto3"],
                   check=True)
    if subprocess.run(check, capture_output=True, text=True).stdout.strip() != VERSION:
        raise RuntimeError(f"MLflow {VERSION} did not install into {VENV}")
    return mlflow


def server_command(mlflow: Path, *, database_url: str, artifact_root: str, port: int, workers: int) -> list[str]:
    return [str(mlflow), "server", "--backend-store-uri", database_url, "--default-artifact-root", artifact_root,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


# Registration as an MLflow user writes it: MlflowClient, in MLflow's own venv (its import and connection set-up not
# timed). It is what the issue measured MLflow by (8.2/s then); the REST figure above is MLflow without its client.
_CLIENT = """
import sys, time
from mlflow import MlflowClient
url, prefix, n, source, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
client = MlflowClient(tracking_uri=url, registry_uri=url)
def one(name):
    client.create_registered_model(name, tags={"base_model": base})
    client.create_model_version(name, source, tags={"base_model": base})
one(prefix + "warm")
t0 = time.perf_counter()
for i in range(n):
    one(f"{prefix}{i:05d}")
print(n / (time.perf_counter() - t0))
"""


def client_rate(url: str, *, prefix: str, count: int, source: str, base: str) -> float:
    """Registrations per second through ``MlflowClient`` (create_registered_model + create_model_version), one client."""
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", _CLIENT, url, prefix, str(count), source, base],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"MlflowClient registration failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


class Registry:
    """MLflow's registry REST API on one keep-alive session per thread."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") + API

    def call(self, session: requests.Session, method: str, path: str, **kwargs) -> dict:
        response = session.request(method, f"{self.url}/{path}", timeout=60, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(f"MLflow {method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def register(self, session: requests.Session, name: str, source: str, base: str, alias: str | None = None) -> None:
        """What registering an already-uploaded adapter takes in MLflow: a registered model and a version that
        points at the artifact (and, for the seeded catalogue, the `prod` alias)."""
        tags = [{"key": "base_model", "value": base}]
        self.call(session, "POST", "registered-models/create", json={"name": name, "tags": tags})
        self.call(session, "POST", "model-versions/create", json={"name": name, "source": source, "tags": tags})
        if alias is not None:
            self.call(session, "POST", "registered-models/alias", json={"name": name, "alias": alias, "version": "1"})

    def seed(self, names: list[str], source: str, bases: list[str], threads: int) -> None:
        """Register each of ``names`` (base ``bases[i % len(bases)]``, alias `prod`) from ``threads`` clients."""
        def run(part: int) -> None:
            with requests.Session() as session:
                for i in range(part, len(names), threads):
                    self.register(session, names[i], source, bases[i % len(bases)], alias="prod")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
