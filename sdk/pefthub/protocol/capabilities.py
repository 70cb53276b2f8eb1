"""What a worker can run, what a job needs, and the one rule that matches them.

A worker reports its **capabilities** when it says hello and when it claims a job::

    {"cuda": false, "gpu_count": 0, "gpu_memory": [], "bitsandbytes": false,
     "torch": "2.13.0", "ram_bytes": 134217728000, "queues": ["gpu"]}

A job states its **needs** when it is submitted (stored on the job)::

    {"cuda": true, "bitsandbytes": true}      # a qlora train
    {"ram_bytes": 1610612736}                 # a merge: one shard of its base, and some margin

The server refuses a claim whose capabilities do not meet the job's needs and keeps the
job queued with ``waiting_for`` (:func:`waiting_reason`) until a worker that meets them
says hello; the worker evaluates the same :func:`unmet`. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .errors import SpecError
from .jobs import MERGE, QUEUES, TRAIN

#: a merge holds about one shard of its base and the shard it writes (up to twice as large
#: when it widens bf16 to float32), plus the interpreter, torch and the adapters
MERGE_SHARD_FACTOR = 2
MERGE_RAM_MARGIN = 512 * 1024**2

#: capability -> its JSON type; a worker may leave any out (a missing bool is False)
CAPABILITY_TYPES: dict[str, type | tuple[type, ...]] = {
    "cuda": bool, "gpu_count": int, "gpu_memory": list, "bitsandbytes": bool, "torch": str, "ram_bytes": int,
    "queues": list,
}
#: need -> its JSON type
NEED_TYPES: dict[str, type] = {"cuda": bool, "bitsandbytes": bool, "ram_bytes": int}

#: how a worker may declare capabilities itself (tests, or overriding what it detects)
CAPABILITIES_ENV = "PEFTHUB_WORKER_CAPABILITIES"

#: what a queue name may hold on every broker (kombu's filesystem transport refuses `@` and `:`)
_QUEUE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def check_capabilities(value: Any, *, field: str = "capabilities") -> dict[str, Any]:
    """``value`` as capabilities, or :class:`SpecError` naming the bad key; unknown keys are refused."""
    if not isinstance(value, dict):
        raise SpecError(field, f"{field} must be an object like {{\"cuda\": true, \"gpu_count\": 1}}")
    for key, item in value.items():
        kind = CAPABILITY_TYPES.get(key)
        if kind is None:
            raise SpecError(f"{field}.{key}", f"{field}.{key} is unknown; known: {', '.join(CAPABILITY_TYPES)}")
        if not isinstance(item, kind) or (kind is int and (isinstance(item, bool) or item < 0)):
            raise SpecError(f"{field}.{key}", f"{field}.{key} must be {_type_name(kind)}, got {item!r}")
    for key, rule in (("gpu_memory", lambda m: isinstance(m, int) and not isinstance(m, bool) and m >= 0),
                      ("queues", lambda q: q in QUEUES)):
        bad = [item for item in value.get(key, []) if not rule(item)]
        if bad:
            what = "bytes per GPU (integers)" if key == "gpu_memory" else f"queue names ({', '.join(QUEUES)})"
            raise SpecError(f"{field}.{key}", f"{field}.{key} must list {what}, got {bad[0]!r}")
    return dict(value)


def capabilities_from_env(environ: dict[str, str] | Any) -> dict[str, Any]:
    """The capabilities declared in ``PEFTHUB_WORKER_CAPABILITIES`` (a JSON object), or ``{}``."""
    text = environ.get(CAPABILITIES_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SpecError(CAPABILITIES_ENV, f"{CAPABILITIES_ENV} is not JSON ({exc}); "
                                          'write an object like {"cuda": true, "bitsandbytes": true}') from None
    return check_capabilities(value, field=CAPABILITIES_ENV)


def job_needs(*, type: str, method: str | None = None, largest_shard: int | None = None) -> dict[str, Any]:
    """What a job needs of its worker: a qlora train CUDA and bitsandbytes, a merge RAM for one shard of its base."""
    if type == TRAIN and method == "qlora":
        return {"cuda": True, "bitsandbytes": True}
    if type == MERGE and largest_shard:
        return {"ram_bytes": largest_shard * MERGE_SHARD_FACTOR + MERGE_RAM_MARGIN}
    return {}


def unmet(needs: dict[str, Any], capabilities: dict[str, Any]) -> list[str]:
    """The needs ``capabilities`` do not meet, as the words :func:`waiting_reason` joins; empty when it can run the job.

    A worker that does not report its RAM is taken to have enough (RAM is not a hard
    property like CUDA); one that does not report CUDA or bitsandbytes has neither.
    """
    missing = []
    for key in ("cuda", "bitsandbytes"):
        if needs.get(key) and not capabilities.get(key):
            missing.append("CUDA" if key == "cuda" else "bitsandbytes")
    ram, has = needs.get("ram_bytes"), capabilities.get("ram_bytes")
    if ram and has is not None and has < ram:
        missing.append(f"{_gib(ram)} of RAM")
    return missing


def waiting_reason(needs: dict[str, Any]) -> str:
    """``"a worker with CUDA and bitsandbytes"``: what a job whose needs no connected worker meets waits for."""
    words = unmet(needs, {"ram_bytes": 0})
    return "a worker with " + " and ".join(words) if words else "a worker"


def direct_queue(worker: str) -> str:
    """A worker's own queue, which it consumes beside its shared ones: the hub sends it the jobs only it can run.

    ``gpu@node-1`` -> ``worker.gpu-node-1.<8 hex>``: the name's safe letters, and a hash of the whole name
    so that two names that differ only in the letters replaced get two queues.
    """
    digest = hashlib.sha256(worker.encode()).hexdigest()[:8]
    return f"worker.{_QUEUE_NAME.sub('-', worker)[:120]}.{digest}"


def _gib(size: int) -> str:
    return f"{size / 1024**3:.1f} GiB"


def _type_name(kind: type | tuple[type, ...]) -> str:
    return {bool: "true or false", int: "a whole number >= 0", str: "a string", list: "a list"}.get(kind, str(kind))
