"""Fuzz the REST API with schemathesis against a real hub: no 5xx, no answer the schema does not describe.

    python -m tests.fuzz.run                                   # SQLite
    python -m tests.fuzz.run --database-url postgres://postgres@127.0.0.1:5432/pefthub_fuzz

1. Start ``pefthub-server up --no-worker`` on a free port with a data dir of its own (on
   PostgreSQL: a fresh database, dropped afterwards).
2. Create alice (admin of team ``acme``, an admin-scope token), bob (``acme`` writer), carol
   (no team) and a worker (staff, worker-scope token) with ``pefthub-server adduser``; with
   alice's token push a base model, an adapter (alias ``prod``) and a dataset through the
   SDK and submit three train jobs (no worker runs, so they stay queued); the worker claims
   the first two, which mints each its job token; a push negotiation hands out a signed
   upload URL for a blob the hub lacks.
3. Run ``st run``: the examples, coverage, fuzzing and stateful phases, a fixed seed and a
   bounded number of cases per operation. Every call carries alice's token, except the
   worker's: ``claim`` carries the worker token, a job's ``heartbeat``/``events``/
   ``complete``/``fail`` a claimed job's token (no other token may make them), and the blob
   ``PUT`` the signed upload URL's parameters. Path parameters are drawn most of the time
   from the seeded objects, so cases reach real repositories, versions, aliases, blobs,
   teams and jobs.
4. Print a table (operation, cases, 5xx, failures by check) and exit 1 on any 5xx, any
   failure not in ``ACCEPTED``, or if alice's token did not survive the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tests.fixtures.services import free_port

BIN = Path(sys.executable).parent

# Every answer is one the schema describes; a deleted object stays gone, a created one is there.
# Not run, and why:
# - negative_data_rejection: the hub takes some values the schema calls invalid, as DRF does: a
#   number for a string field (`{"name": 0}` makes team "0"), a `page_size` that is not a positive
#   integer (the default).
# - missing_required_header, ignored_auth: what a caller cannot see is 404 before any 401 (no
#   existence leak), so a tokenless write to a private repository is 404, not the 401 they expect.
# - positive_data_acceptance: names, references and job specs follow rules (pefthub.protocol) that
#   JSON Schema does not express, so a schema-valid value may still be a 400.
CHECKS = [
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
    "response_headers_conformance", "unsupported_method", "allow_header_conformance", "use_after_free",
    "ensure_resource_availability",
]
PHASES = "examples,coverage,fuzzing,stateful"

# Failures accepted, each with its reason: {(check, "METHOD /path"): reason}. None is accepted today.
ACCEPTED: dict[tuple[str, str], str] = {}


def _server_command(*args: str, env: dict) -> str:
    return subprocess.run([str(BIN / "pefthub-server"), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _postgres(url: str, *, create: bool) -> None:
    """Drop the database ``url`` names (the harness owns it) and, with ``create``, make it afresh."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')


def _wait_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the hub exited with {server.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the hub did not answer on {url} within {timeout:.0f} s")


def build_models(work: Path) -> tuple[Path, Path, Path]:
    """A one-layer Llama base (zero weights), a LoRA adapter on it and a JSONL dataset: real layouts, no torch."""
    import numpy as np
    from safetensors.numpy import save_file

    from examples import tiny

    hidden, inner, vocab, rank = 16, 32, 64, 2
    base, adapter = work / "llama-tiny", work / "support-bot"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inner,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab,
        "tie_word_embeddings": False, "torch_dtype": "float32"}))
    layer = "model.layers.0."
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              layer + "input_layernorm.weight": (hidden,), layer + "post_attention_layernorm.weight": (hidden,),
              **{f"{layer}self_attn.{m}_proj.weight": (hidden, hidden) for m in "qkvo"},
              **{f"{layer}mlp.{m}_proj.weight": (inner, hidden) for m in ("gate", "up")},
              layer + "mlp.down_proj.weight": (hidden, inner)}
    save_file({name: np.zeros(shape, np.float32) for name, shape in shapes.items()}, str(base / "model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "acme/llama-tiny", "bias": "none"}))
    lora = {f"base_model.model.{layer}self_attn.{m}_proj.lora_{ab}.weight": np.full(shape, 0.01, np.float32)
            for m in "qv" for ab, shape in (("A", (rank, hidden)), ("B", (hidden, rank)))}
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    return base, adapter, tiny.make_dataset(work / "support-data.jsonl")


def seed(url: str, *, alice: str, worker: str, folders: tuple[Path, Path, Path], cache: Path) -> dict:
    """The seeded objects and the tokens that reach them: path values, the claimed job and its token."""
    from pefthub import Hub

    base, adapter_dir, data = folders
    with Hub(url=url, token=alice, cache_dir=cache, progress=False) as hub:
        hub.push(base, "acme/llama-tiny")
        adapter = hub.push(adapter_dir, "acme/support-bot", base_model="acme/llama-tiny", aliases=["prod", "old"])
        hub.push(data, "acme/support-data")
        jobs = [hub.train(base_model="acme/llama-tiny", dataset="acme/support-data", output="acme/support-bot",
                          method="lora", r=4, max_steps=2) for _ in range(3)]
        victim = hub.request("POST", "tokens", json={"name": "fuzz-victim", "scope": "read"})
        hub.create_repo("acme/doomed", kind="dataset")
        # A signed upload URL for a blob the hub lacks: PUT /blobs/{sha256} gets past its signature check.
        blob = b'{"text": "one more row"}\n'
        sha = hashlib.sha256(blob).hexdigest()
        negotiated = hub.request("POST", "repos/acme/support-data/uploads",
                                 json={"files": [{"path": "more.jsonl", "sha256": sha, "size": len(blob)}]})
        upload = dict(parse_qsl(urlsplit(negotiated["missing"][0]["upload"]["url"]).query))
    with Hub(url=url, token=worker, cache_dir=cache, progress=False) as hub:
        # The first job's token heartbeats and reports events, the second's completes and fails: failing its
        # job ends the second token, not the first.
        claims = [hub.request("POST", f"jobs/{job.id}/claim", json={"worker": "fuzz-worker"}) for job in jobs[:2]]
    return {
        "path": {
            "ns": ["acme"],
            "name": ["llama-tiny", "support-bot", "support-data"],
            "rev": ["1", "latest", "prod", adapter.digest],
            "alias": ["prod", "staging"],
            "team": ["acme"],
            "username": ["bob", "carol"],  # never alice: she stays acme's admin for the whole run
            "job_id": [job.id for job in jobs],
            "sha256": [f.sha256 for f in adapter.files],
        },
        # A future expiry, so signatures of blob URLs get checked (a blob PUT has its own, real ones).
        "query": {"expires": [int(time.time()) + 86400]},
        # Request body fields, so job submissions and pushes name real repositories.
        "body": {
            "base_model": ["acme/llama-tiny"],
            "dataset": ["acme/support-data"],
            "output": ["acme/support-bot", "acme/support-bot-2"],
            "adapters[*].ref": ["acme/support-bot@1"],
        },
        # What the deletes delete, in every phase, so the rest serves the whole run: alice's own token
        # must outlive it, and the coverage phase would delete the schema's example repository first.
        "fixed": {"token_id": victim["id"]},
        "doomed": {"DELETE /api/v1/repos/{ns}/{name}": {"name": "doomed"},
                   "DELETE /api/v1/repos/{ns}/{name}/aliases/{alias}": {"alias": "old"}},
        "claimed": [(job.id, claim["token"]) for job, claim in zip(jobs, claims)],
        "upload": {"sha256": sha, **upload},
    }


def write_config(path: Path, *, url: str, alice: str, worker: str, seeded: dict, seed_value: int, examples: int,
                 report_dir: Path) -> None:
    """schemathesis.toml: the hub, the tokens, the checks, the seeded path values."""
    lines = [
        f'base-url = "{url}"',
        f"seed = {seed_value}",
        "workers = 1",
        f'headers = {{ Authorization = "Bearer {alice}" }}',
        "[generation]",
        f"max-examples = {examples}",
        "[phases.stateful.generation]",  # more scenarios: each follows links from one seeded object to the next
        f"max-examples = {2 * examples}",
        "[checks]",
        "enabled = false",
        *[f"{check}.enabled = true" for check in CHECKS],
        "[reports]",
        f'directory = "{report_dir}"',
        "ndjson.enabled = true",
        "[dictionaries]",
        *[f'"{where}.{name}" = {{ values = {json.dumps(values)} }}'
          for where in ("path", "query", "body") for name, values in seeded[where].items()],
        "[parameters]",
        # Mostly seeded values, so cases get past "not found"; sometimes generated ones.
        *[f'"{where}.{name}" = {{ dictionary = "{where}.{name}", probability = 0.8 }}'
          for where in ("path", "query", "body") for name in seeded[where]],
        *[f'"path.{name}" = {json.dumps(value)}' for name, value in seeded["fixed"].items()],
        # One filter per block: schemathesis ORs the include-* filters of a block.
        *[line for operation, values in seeded["doomed"].items() for line in (
            "[[operations]]",
            f'include-name = "{operation}"',
            "parameters = { " + ", ".join(f'"path.{k}" = "{v}"' for k, v in values.items()) + " }")],
        "[[operations]]",
        "include-name-regex = '^POST /api/v1/jobs/[{]job_id[}]/claim$'",
        f'headers = {{ Authorization = "Bearer {worker}" }}',
        "[[operations]]",
        "include-name-regex = '^PUT /api/v1/blobs/'",
        "parameters = { " + ", ".join(f'"{"path" if name == "sha256" else "query"}.{name}" = {json.dumps(value)}'
                                      for name, value in seeded["upload"].items()) + " }",
    ]
    for calls, (job_id, token) in zip(("heartbeat|events", "complete|fail"), seeded["claimed"]):
        lines += [
            "[[operations]]",
            f"include-name-regex = '^POST /api/v1/jobs/[{{]job_id[}}]/({calls})$'",
            f'headers = {{ Authorization = "Bearer {token}" }}',
            f'parameters = {{ "path.job_id" = "{job_id}" }}',
        ]
    path.write_text("\n".join(lines) + "\n")


def report(reports: Path, *, database: str, seconds: dict[str, float]) -> int:
    """Read schemathesis' NDJSON events; print the table; 1 on any 5xx, scenario error or failure not accepted."""
    cases: Counter = Counter()
    server_errors: Counter = Counter()
    failures: dict[str, Counter] = defaultdict(Counter)
    errors: list[str] = []
    finished = False
    for path in sorted(reports.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            finished |= "EngineFinished" in event
            scenario = event.get("ScenarioFinished")
            if scenario is None:
                continue
            recorder = scenario["recorder"]
            if scenario["status"] == "error":
                errors.append(f"{recorder['label']} ({scenario['phase']})")
            for case_id, case in recorder.get("cases", {}).items():
                # A stateful scenario spans operations; in the others, cases with other methods probe this one.
                stateful = scenario["phase"] == "stateful"
                operation = f"{case['value']['method']} {case['value']['path']}" if stateful else recorder["label"]
                cases[operation] += 1
                for check in recorder.get("checks", {}).get(case_id, []):
                    if check["status"] == "failure":
                        failures[operation][check["name"]] += 1
                response = (recorder.get("interactions", {}).get(case_id) or {}).get("response") or {}
                if response.get("status_code", 0) >= 500:
                    server_errors[operation] += 1

    width = max(map(len, cases), default=10)
    print(f"\n{'operation':<{width}}  {'cases':>6}  {'5xx':>4}  failures by check")
    for operation in sorted(cases, key=lambda o: (o.split()[1], o.split()[0])):
        found = ", ".join(f"{name} {n}" + (" (accepted)" if (name, operation) in ACCEPTED else "")
                          for name, n in sorted(failures[operation].items()))
        print(f"{operation:<{width}}  {cases[operation]:>6}  {server_errors[operation]:>4}  {found or '-'}")
    violations = {(name, op): n for op, by_check in failures.items() for name, n in by_check.items()
                  if name != "not_a_server_error" and (name, op) not in ACCEPTED}
    fives = sum(server_errors.values())
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    print(f"\n{database}: {len(cases)} operations, {sum(cases.values())} cases, 5xx: {fives}, "
          f"schema violations: {sum(violations.values())}, accepted: {len(ACCEPTED)}, scenario errors: {len(errors)} "
          f"({timing})")
    for reason in errors:
        print(f"  error: {reason}")
    return 0 if finished and not fives and not violations and not errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="", help="a PostgreSQL database to create, fuzz and drop")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--max-examples", type=int, default=20, help="generated cases per operation and phase")
    parser.add_argument("--keep", action="store_true", help="keep the data dir, server log and reports")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pefthub-fuzz-"))
    env = {**os.environ, "PEFTHUB_DATA_DIR": str(work / "data"), "DJANGO_SETTINGS_MODULE": "pefthub_server.settings",
           "PEFTHUB_DISABLE_PROGRESS_BARS": "1", "PEFTHUB_JOB_LEASE_SECONDS": "3600"}  # the claim outlives the run
    for name in ("CELERY_BROKER_URL", "PEFTHUB_STORAGE", "DATABASE_URL"):
        env.pop(name, None)  # the embedded broker (jobs wait in the data dir), local blobs, SQLite by default
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
        _postgres(args.database_url, create=True)
    url = f"http://127.0.0.1:{free_port()}"
    server_log = (work / "server.log").open("w")
    server = subprocess.Popen([str(BIN / "pefthub-server"), "up", "--no-worker", "--port", url.rsplit(":", 1)[1]],
                              env=env, stdout=server_log, stderr=subprocess.STDOUT, cwd=work)
    started = time.monotonic()
    try:
        folders = build_models(work)
        _wait_up(url, server)
        alice = _server_command("adduser", "alice", "--team", "acme", "--role", "admin", "--scope", "admin", env=env)
        _server_command("adduser", "bob", "--team", "acme", "--role", "write", env=env)
        _server_command("adduser", "carol", env=env)
        worker = _server_command("adduser", "fuzz-worker", "--scope", "worker", env=env)  # staff, not superuser
        seeded = seed(url, alice=alice, worker=worker, folders=folders, cache=work / "cache")
        ready = time.monotonic()
        config, reports = work / "schemathesis.toml", work / "reports"
        write_config(config, url=url, alice=alice, worker=worker, seeded=seeded, seed_value=args.seed,
                     examples=args.max_examples, report_dir=reports)
        st = subprocess.run([str(BIN / "st"), "--config-file", str(config), "run", f"{url}/api/schema/?format=json",
                             "--phases", PHASES, "--no-color"], env=env, cwd=work, capture_output=True, text=True)
        print(st.stdout[-30000:], st.stderr[-5000:], sep="\n")
        code = report(reports, database="PostgreSQL" if args.database_url else "SQLite",
                      seconds={"setup": ready - started, "fuzzing": time.monotonic() - ready})
        request = urllib.request.Request(f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {alice}"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            print(f"alice's token did not survive the run ({exc}): the cases after its loss tested nothing")
            code = 1
        return code
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
        if args.database_url:
            _postgres(args.database_url, create=False)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
