"""``pefthub train``, ``pefthub merge``, ``pefthub eval`` and ``pefthub jobs ls|show|logs|cancel|checkpoints|promote``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ._cli_util import UsageError, labelled, make_hub, print_json, show
from ._table import table
from .jobs import Job, JobEvent
from .protocol.errors import SpecError
from .protocol.jobs import JOB_ID_MIN_PREFIX, JOB_TYPES, QUEUES, STATUSES
from .protocol.peft import METHODS
from .protocol.specs import COMBINATIONS, DTYPES, parse_overrides

JOB_ID_HELP = f"the job's id, or a prefix of it that names one job (at least {JOB_ID_MIN_PREFIX} hex digits)"

#: hub.train's own keywords; any other key of a --config file is a hyperparameter
TRAIN_KEYS = frozenset(
    {"base_model", "dataset", "output", "method", "continue_from", "aliases", "message", "queue", "max_attempts",
     "idempotency_key"}
)


# -- formatting ------------------------------------------------------------------------
def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sci(value: Any) -> str:
    """``2e-04``, ``1.5e-05``: learning rates read best in scientific notation."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    mantissa, exponent = f"{float(value):.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def format_metric(data: dict[str, Any]) -> str:
    """``step 10/40 loss 2.31 lr 2e-04``; keys it does not know follow as ``key value``."""
    parts: list[str] = []
    rest = dict(data)
    step, total = rest.pop("step", None), rest.pop("total_steps", None)
    if step is not None:
        parts.append(f"step {step}/{total}" if total else f"step {step}")
    for key, label, fmt in (
        ("loss", "loss", _num), ("eval_loss", "eval_loss", _num), ("learning_rate", "lr", _sci),
        ("epoch", "epoch", _num), ("tokens_per_second", "tok/s", lambda v: f"{v:.0f}"),
    ):
        value = rest.pop(key, None)
        if value is not None:
            parts.append(f"{label} {fmt(value) if isinstance(value, (int, float)) else value}")
    parts.extend(f"{key} {_num(value)}" for key, value in sorted(rest.items()))
    return " ".join(parts) or "metric"


def _when(time: str | None) -> str:
    if not time:
        return ""
    try:
        return datetime.fromisoformat(time.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return time


def format_event(event: JobEvent) -> str:
    """One line per event, behind its time: metrics, log messages, status changes."""
    d = event.data
    if event.type == "metric":
        text = format_metric(d)
    elif event.type == "log":
        level = str(d.get("level") or "info").lower()
        message = str(d.get("message", ""))
        text = message if level == "info" else f"{level.upper()} {message}"
    elif event.type == "status":
        text = f"status {d.get('status')}"
        if event.attempt:  # 0 while still queued
            text += f" (attempt {event.attempt})"
        if d.get("waiting_for"):
            text += f", waiting for {d['waiting_for']}"
        error = d.get("error") if isinstance(d.get("error"), dict) else {}
        why = d.get("reason") or (error and f"{error.get('code')}: {error.get('message')}")
        if why:
            text += f": {why}"
    elif event.type == "checkpoint":
        metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
        text = f"checkpoint at step {d.get('step')}" + (f": {format_metric(metrics)}" if metrics else "")
    elif event.type == "artifact":
        text = f"artifact {d.get('repo')}@{d.get('number')} {d.get('digest') or ''}".rstrip()
    else:
        text = f"{event.type} {json.dumps(d, sort_keys=True)}"
    when = _when(event.time)
    return f"{when}  {text}" if when else text


def _pin(value: Any) -> str:
    if isinstance(value, dict) and value.get("repo"):
        return f"{value['repo']}@{value.get('number')}"
    if isinstance(value, list):
        return ", ".join(_pin(v) for v in value)
    return json.dumps(value, sort_keys=True)


def _step(job: Job) -> str | None:
    step, total = job.progress.get("step"), job.progress.get("total_steps")
    if step is None:
        return None
    return f"{step}/{total}" if total else str(step)


def _queue(job: Job) -> str:
    """``gpu``, or ``gpu (position 2 of 5)`` while the job waits in it."""
    if job.queue_position is None:
        return job.queue or "-"
    return f"{job.queue} (position {job.queue_position} of {job.queue_depth})"


def describe_job(job: Job) -> str:
    attempts = f" (attempt {job.attempt}/{job.max_attempts})" if job.attempt else ""
    error = job.error and f"{job.error.get('code')}: {job.error.get('message')}"
    rows = [
        ("type", job.type), ("status", f"{job.status}{attempts}"), ("waiting", job.waiting_for),
        ("output", job.output or "-"), ("queue", _queue(job)), ("owner", job.owner or "-"),
        *((name, _pin(value)) for name, value in job.inputs.items()),
        ("progress", job.progress and format_metric(job.progress)), ("metrics", job.metrics and format_metric(job.metrics)),
        ("result", job.result_ref), ("error", error),
        ("created", job.created_at or "-"), ("started", job.started_at or "-"), ("finished", job.finished_at or "-"),
        ("spec", json.dumps(job.spec, sort_keys=True)),
    ]
    return "\n".join([job.id, *labelled(rows)])


# -- helpers -------------------------------------------------------------------------------
def read_config(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping (YAML needs PyYAML, imported only here)."""
    text = Path(path).read_text(encoding="utf-8")
    suffix = Path(path).suffix.lower()
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError:
            try:
                import yaml
            except ImportError as exc:
                raise UsageError(
                    f"{path}: reading YAML needs PyYAML: pip install pyyaml (or 'pefthub[yaml]'), or write the file as JSON"
                ) from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise UsageError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the config must be a mapping of keys to values")
    return data


def _wait_and_report(job: Job, *, print_result: bool = True) -> int:
    try:
        job.wait()
    except KeyboardInterrupt:
        print(
            f"stopped waiting; the job goes on: `pefthub jobs logs {job.id} --follow`, `pefthub jobs cancel {job.id}`",
            file=sys.stderr,
        )
        raise
    if print_result:
        print(job.result_ref or "")
    return 0


# -- commands --------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    config = read_config(args.config) if args.config else {}
    config.pop("type", None)  # a job's spec ({"type": "train", ...}) works as a config too
    hyper = dict(config.pop("hyperparameters", None) or {})
    options = {k: v for k, v in config.items() if k in TRAIN_KEYS}
    hyper.update({k: v for k, v in config.items() if k not in TRAIN_KEYS})
    for key in ("base_model", "dataset", "output", "method", "continue_from", "message", "queue", "max_attempts"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.alias:
        options["aliases"] = args.alias
    try:
        hyper.update(parse_overrides(args.set))
    except SpecError as exc:
        raise UsageError(exc.message) from None
    missing = [f"--{k.replace('_', '-')}" for k in ("base_model", "dataset", "output") if not options.get(k)]
    if missing:
        raise UsageError(f"train needs {', '.join(missing)} (as flags or in --config)")
    with make_hub() as hub:
        job = hub.train(hyperparameters=hyper, **options)
        print(job.id, flush=True)
        return _wait_and_report(job) if args.wait else 0


def cmd_merge(args: argparse.Namespace) -> int:
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError as exc:
            raise UsageError(f"--weights {args.weights!r}: write comma-separated numbers, e.g. 0.7,0.3") from exc
    with make_hub() as hub:
        job = hub.merge(
            args.refs, output=args.output, weights=weights, combination=args.combination, density=args.density,
            dtype=args.dtype, aliases=args.alias or (), message=args.message, queue=args.queue,
        )
        print(job.id, flush=True)
        return _wait_and_report(job) if args.wait else 0


def metrics_table(metrics: dict[str, Any]) -> str:
    """``METRIC VALUE`` rows by name (the hub's database may keep JSON keys in its own order)."""
    return table(("METRIC", "VALUE"), [(name, _num(value)) for name, value in sorted(metrics.items())])


def cmd_eval(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.evaluate(args.ref, dataset=args.dataset, dataset_file=args.dataset_file,
                           max_new_tokens=args.max_new_tokens, max_rows=args.max_rows,
                           max_seq_length=args.max_seq_length, batch_size=args.batch_size, queue=args.queue)
        print(job.id, flush=True)
        if not args.wait:
            return 0
        _wait_and_report(job, print_result=False)
    print(metrics_table(job.metrics))
    return 0


def cmd_jobs_ls(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        jobs = list(hub.jobs(status=args.status, type=args.type, output=args.output))
    if args.json:
        print_json([j.raw for j in jobs])
        return 0
    rows = [(j.id, j.type, j.status_line, j.output, _step(j), j.created_at) for j in jobs]
    print(table(("ID", "TYPE", "STATUS", "OUTPUT", "STEP", "CREATED"), rows))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.job(args.id)
    return show(args.json, job.raw, lambda: describe_job(job))


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.job(args.id)
        for event in job.events(args.after, follow=args.follow):
            print(format_event(event), flush=True)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.job(args.id).cancel()
    print(f"{job.id} {job.status}")
    return 0


def cmd_jobs_checkpoints(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.job(args.id)
        found = job.checkpoints()
    if args.json:
        print_json([vars(c) for c in found])
        return 0
    if not found:
        print(f"job {job.id} has no checkpoints")
        return 0
    rows = [(c.step, c.attempt, format_metric(dict(c.metrics)), c.created_at) for c in found]
    print(table(("STEP", "ATTEMPT", "METRICS", "CREATED"), rows))
    return 0


def cmd_jobs_promote(args: argparse.Namespace) -> int:
    with make_hub() as hub:
        job = hub.job(args.id)
        version = hub.promote_checkpoint(job, args.step, output=args.output, aliases=args.alias or (),
                                         message=args.message)
    state = "created" if version.created else "unchanged"
    print(f"{version.ref} {version.digest} {state} (step {args.step} of job {job.id})")
    return 0


# -- parser ------------------------------------------------------------------------------------
def add_job_commands(sub: Any) -> None:
    p = sub.add_parser("train", help="submit a training job; prints its id")
    p.add_argument("--base-model", metavar="REF", help="base model, ns/name[@rev]")
    p.add_argument("--dataset", metavar="REF", help="dataset, ns/name[@rev]")
    p.add_argument("--output", metavar="NS/NAME", help="adapter repository to push the result to")
    p.add_argument("--method", choices=METHODS, help="default: lora")
    p.add_argument("--continue-from", metavar="REF",
                   help="adapter ns/name[@rev] to start from (its weights; r, alpha and targets default to its own)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a hyperparameter; VALUE is JSON when it parses (8, 2e-4, '[\"q_proj\"]'), else text (repeatable)")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="point this alias at the result (repeatable)")
    p.add_argument("-m", "--message", help="message of the result version")
    p.add_argument("--queue", choices=QUEUES, help="default: gpu")
    p.add_argument("--max-attempts", type=int, metavar="N", help="1-10, default 3")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON with the same keys as hub.train; flags override it")
    p.add_argument("--wait", action="store_true", help="follow the job to its end and print the result ref")
    p.set_defaults(func=cmd_train, needs_token=True)

    p = sub.add_parser("merge", help="submit a merge job (one adapter into its base, or several combined)")
    p.add_argument("refs", nargs="+", metavar="REF", help="adapter ns/name[@rev]")
    p.add_argument("--output", required=True, metavar="NS/NAME", help="model repository to push the result to")
    p.add_argument("--weights", metavar="W1,W2", help="one weight per adapter (default 1.0 each)")
    p.add_argument("--combination", choices=COMBINATIONS, default="linear")
    p.add_argument("--density", type=float, default=0.5, help="kept fraction for ties/dare (default 0.5)")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="point this alias at the result (repeatable)")
    p.add_argument("-m", "--message", default="", help="message of the result version")
    p.add_argument("--queue", choices=QUEUES, help="default: cpu")
    p.add_argument("--wait", action="store_true", help="follow the job to its end and print the result ref")
    p.set_defaults(func=cmd_merge, needs_token=True)

    p = sub.add_parser("eval", help="submit an eval job: score an adapter version on a dataset; prints its id")
    p.add_argument("ref", metavar="REF", help="adapter ns/name[@rev]; the metrics are attached to that version")
    p.add_argument("--dataset", required=True, metavar="REF", help="dataset ns/name[@rev]")
    p.add_argument("--dataset-file", metavar="PATH", help="which .jsonl file of the dataset (default: its only or first)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="cap on generated tokens per prompt/completion row (default 64)")
    p.add_argument("--max-rows", type=int, default=1000, metavar="N", help="score the first N rows (default 1000)")
    p.add_argument("--max-seq-length", type=int, default=512, metavar="N", help="tokens per row (default 512)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="rows per loss batch (default 8)")
    p.add_argument("--queue", choices=QUEUES, help="default: cpu")
    p.add_argument("--wait", action="store_true", help="follow the job to its end and print its metrics")
    p.set_defaults(func=cmd_eval, needs_token=True)

    jobs = sub.add_parser("jobs", help="list, show, follow and cancel jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    p = jsub.add_parser("ls", help="jobs you may see, newest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--type", choices=JOB_TYPES)
    p.add_argument("--output", metavar="NS/NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs_ls, needs_token=True)

    p = jsub.add_parser("show", help="one job")
    p.add_argument("id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs_show, needs_token=True)

    p = jsub.add_parser("logs", help="a job's events: metrics, log lines, status changes")
    p.add_argument("id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this sequence number")
    p.set_defaults(func=cmd_jobs_logs, needs_token=True)

    p = jsub.add_parser("cancel", help="stop a job (queued: at once; running: at its next heartbeat)")
    p.add_argument("id", metavar="ID", help=JOB_ID_HELP)
    p.set_defaults(func=cmd_jobs_cancel, needs_token=True)

    p = jsub.add_parser("checkpoints", help="a train job's kept checkpoints (a re-queued attempt resumes from the newest)")
    p.add_argument("id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs_checkpoints, needs_token=True)

    p = jsub.add_parser("promote", help="make a version of an adapter repository from one of a job's checkpoints")
    p.add_argument("id", metavar="ID", help=JOB_ID_HELP)
    p.add_argument("step", type=int, metavar="STEP", help="the checkpoint's step (`pefthub jobs checkpoints ID`)")
    p.add_argument("--output", required=True, metavar="NS/NAME", help="adapter repository for the version")
    p.add_argument("--alias", action="append", metavar="ALIAS", help="point this alias at the version (repeatable)")
    p.add_argument("-m", "--message", default="", help="message of the version")
    p.set_defaults(func=cmd_jobs_promote, needs_token=True)
