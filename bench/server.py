"""Production server benchmark: `pefthub-server up` (waitress) beside gunicorn (gthread) and granian (WSGI), same hub.

    python bench/server.py [--seconds 10] [--repos 200]

One PostgreSQL database (DATABASE_URL's server, a throw-away database `pefthub_bench_server`), migrated and seeded
with `--repos` public LoRA adapters on one base. Each server runs the same hub, one after another, on the same port
kind, and is measured the same way:

- throughput and latency of `GET /api/v1/repos?page_size=100` (with a write token) from 8 and then 32 client threads,
  each on its own keep-alive connection (http.client), closed loop, `--seconds` each after a warm-up; requests/s,
  p50, p95, errors (non-200). The clients run on the same 2 cores as the server: every server pays for them alike;
- idle memory after the load: RSS and PSS summed over the server's processes (PSS shares forked pages fairly);
- how each treats a request body: a 256 MiB upload streamed to a WSGI app that reads and drops it in 64 KiB pieces
  (peak RSS growth of the server while it arrives), and `Expect: 100-continue` on a 50 MiB POST the hub refuses
  (the first answer: a 413, or a "100 Continue" that invites the body).

The baseline for the ratios is waitress, what `pefthub-server up` runs (and what production ran before `serve`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT, BIN = Path(__file__).resolve().parents[1], Path(sys.executable).parent
DATABASE = "pefthub_bench_server"
LIST = "/api/v1/repos?page_size=100"

SEED = """
from pefthub_server.core.tokens import token_create
from pefthub_server.registry.models import Namespace, Repository
from pefthub_server.registry.teams import user_ensure
alice = user_ensure(username="alice", team="acme", role="admin")
acme = Namespace.objects.get(name="acme")
base = Repository.objects.create(namespace=acme, name="llama-base", kind="model", visibility="public", latest_number=1)
Repository.objects.bulk_create([Repository(namespace=acme, name=f"adapter-{{i:04d}}", kind="adapter", base_model=base,
    peft_type="LORA", latest_number=1, visibility="public", description=f"adapter number {{i}} for the benchmark")
    for i in range({repos})])
print(token_create(user=alice, scope="write")[1])
"""

DRAIN_APP = '''
def application(environ, start_response):
    stream, total = environ["wsgi.input"], 0
    while chunk := stream.read(65536):
        total += len(chunk)
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    return found


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over ``pid``'s process tree."""
    rss = pss = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], port: int, log: Path, path: str = "/healthz"):
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", path)
                if conn.getresponse().status < 500:
                    conn.close()
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load(port: int, token: str, clients: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads, one keep-alive connection each, for ``seconds``."""
    latencies: list[float] = []
    errors = [0]
    first_error: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, bad = [], 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                conn.request("GET", LIST, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                if not ok and not first_error:
                    first_error.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                if not first_error:
                    first_error.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine.append(time.perf_counter() - started)
            bad += not ok
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2] * 1000,
            "p95": latencies[int(len(latencies) * 0.95)] * 1000, "errors": errors[0], "n": len(latencies),
            "first_error": first_error[0] if first_error else ""}


def expect_continue(port: int) -> str:
    """The first thing a server says to a 50 MiB POST with ``Expect: 100-continue`` (the hub allows 16 MiB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/repos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\nExpect: 100-continue\r\n\r\n")
        try:
            first = sock.recv(200).split(b"\r\n", 1)[0].decode()
        except TimeoutError:
            return "nothing in 5 s"
    return first.removeprefix("HTTP/1.1 ") or "closed"


def upload_peak(port: int, pid: int, mib: int = 256) -> tuple[float, str]:
    """Peak RSS growth (MiB) of the server while a ``mib`` MiB body streams to it; and the app's answer."""
    base, _ = memory(pid)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], memory(pid)[0])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {mib * 1024**2}\r\n\r\n".encode())
            piece = b"x" * 1024**2
            for _ in range(mib):
                sock.sendall(piece)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.split(b"\r\n\r\n", 1)[1]:
                answer += sock.recv(4096)
            answer = answer.split(b"\r\n\r\n", 1)[1].decode()
    finally:
        done.set()
        sampler.join()
    return peak[0] - base, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--only", default="", help="measure only the servers whose name contains this")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every server, interleaved (median shown)")
    args = parser.parse_args()

    import psycopg

    server_url = os.environ.get("PEFTHUB_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(server_url)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    work = Path(tempfile.mkdtemp(prefix="pefthub-bench-server-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFTHUB_", "DJANGO_", "CELERY_"))
           and k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update({"DATABASE_URL": urlunsplit(parts._replace(path=f"/{DATABASE}")), "PEFTHUB_DATA_DIR": str(work / "data"),
                "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdef0123456789", "PEFTHUB_ACCESS_LOG": "0",
                "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15", "PYTHONUNBUFFERED": "1"})
    hub = str(BIN / "pefthub-server")
    try:
        subprocess.run([hub, "migrate", "-v0"], env=env, check=True, cwd=work)
        with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute("ANALYZE")
        seeded = subprocess.run([hub, "shell", "-c", SEED.format(repos=args.repos)], env=env, check=True, cwd=work,
                                capture_output=True, text=True)
        token = seeded.stdout.strip().splitlines()[-1]
        (work / "drain_app.py").write_text(DRAIN_APP)

        def servers(port: int) -> dict[str, list[str]]:
            gran = [str(BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
                    "--no-ws", "--log-level", "warning"]
            return {
                "waitress (up), 16 threads": [hub, "up", "--no-worker", "--port", str(port)],
                "gunicorn gthread 2x8 (serve)": [hub, "serve", "--host", "127.0.0.1", "--port", str(port),
                                                 "--workers", "2", "--threads", "8"],
                "gunicorn gthread 2x4 (serve)": [hub, "serve", "--host", "127.0.0.1", "--port", str(port),
                                                 "--workers", "2", "--threads", "4"],
                "granian wsgi 2x8": [*gran, "--workers", "2", "--blocking-threads", "8", "--factory",
                                     "pefthub_server.server:production_application"],
            }

        names = [n for n in servers(0) if args.only in n]
        runs: dict[str, list[tuple[dict, float, float, str]]] = {name: [] for name in names}
        for _ in range(args.rounds):  # interleaved, so a busy moment on the machine hits every server alike
            for name in names:
                port = free_port()
                server_env = {**env, "DJANGO_SETTINGS_MODULE": "pefthub_server.settings"} if "granian" in name else env
                with running(servers(port)[name], server_env, port, work / "server.log") as proc:
                    load(port, token, 8, 2)  # warm-up: every worker imports, connects, fills its caches
                    results = {c: load(port, token, c, args.seconds) for c in (8, 32)}
                    time.sleep(2)
                    rss, pss = memory(proc.pid)
                    expect = expect_continue(port)
                runs[name].append((results, rss, pss, expect))
                print(f"  measured {name}: " + ", ".join(f"{c} clients {r['rps']:.1f}/s {r['first_error']}"
                                                        for c, r in results.items()), file=sys.stderr)
        rows = []
        for name, measured in runs.items():
            med = {c: {key: statistics.median(m[0][c][key] for m in measured) for key in ("rps", "p50", "p95")}
                   | {"errors": sum(m[0][c]["errors"] for m in measured)} for c in (8, 32)}
            rows.append((name, med, statistics.median(m[1] for m in measured),
                         statistics.median(m[2] for m in measured), measured[-1][3]))

        uploads = []
        for name, cmd in (
            ("gunicorn gthread", [str(BIN / "gunicorn"), "-k", "gthread", "--threads", "4", "-w", "1", "--chdir",
                                  str(work), "drain_app:application"]),
            ("granian wsgi", [str(BIN / "granian"), "--interface", "wsgi", "--workers", "1", "--working-dir",
                              str(work), "--no-ws", "drain_app:application"]),
        ):
            port = free_port()
            listen = ["--bind", f"127.0.0.1:{port}"] if "gunicorn" in name else ["--host", "127.0.0.1", "--port", str(port)]
            with running([*cmd, *listen], env, port, work / "drain.log", path="/") as proc:
                uploads.append((name, *upload_peak(port, proc.pid)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')

    base = rows[0][1]
    print(f"\nGET {LIST} ({args.repos} public adapters, a write token), {args.seconds:g} s per level, "
          f"keep-alive clients on the same {os.cpu_count()} cores; median of {args.rounds} interleaved rounds "
          "(errors: the sum)")
    head = (f"{'server':30} {'clients':>7} {'req/s':>7} {'vs up':>6} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6}  "
            f"{'idle RSS / PSS MiB':>18}  Expect: 100-continue, 50 MiB refused body")
    print(head)
    print("-" * len(head))
    for name, results, rss, pss, expect in rows:
        for i, clients in enumerate((8, 32)):
            r = results[clients]
            tail = f"  {f'{rss:.0f} / {pss:.0f}':>18}  {expect}" if i == 0 else ""
            print(f"{name if i == 0 else '':30} {clients:>7} {r['rps']:>7.1f} {r['rps'] / base[clients]['rps']:>5.2f}x "
                  f"{r['p50']:>7.1f} {r['p95']:>7.1f} {r['errors']:>6}{tail}")
    print("\nA 256 MiB body streamed to a WSGI app that reads it in 64 KiB pieces (1 worker):")
    for name, growth, answer in uploads:
        print(f"  {name:18} peak RSS growth {growth:7.1f} MiB, app read {answer} bytes")


if __name__ == "__main__":
    main()
