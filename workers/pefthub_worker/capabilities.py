"""What this worker can run, and telling the hub it is connected.

:func:`detect` measures the capabilities a job's needs are matched against
(:mod:`pefthub.protocol.capabilities`): CUDA, GPU count and memory, bitsandbytes usable
(importable, with CUDA), the torch version, RAM and the queues it consumes.
``PEFTHUB_WORKER_CAPABILITIES`` (a JSON object) overrides what it detects, key by key: a
knob for tests (a CPU machine posing as a CUDA node) and for operators who want a node to
take less than it could. :func:`say_hello_forever` tells the hub every few seconds that the
worker is connected; a hello makes the hub send it the waiting jobs only it can run.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from typing import Any

from pefthub import Hub
from pefthub.errors import HubError
from pefthub.protocol.capabilities import capabilities_from_env, check_capabilities
from pefthub.protocol.jobs import QUEUES

from .client import WorkerClient

log = logging.getLogger(__name__)

#: set by `pefthub-worker` for its Celery worker (and its pool's processes)
NAME_ENV, QUEUES_ENV = "PEFTHUB_WORKER_NAME", "PEFTHUB_WORKER_QUEUES"


def worker_name() -> str:
    """This worker's name: its Celery node name (`--hostname`), else host:pid of the `pefthub-worker` process."""
    return os.environ.get(NAME_ENV) or f"{socket.gethostname()}:{os.getpid()}"


def _bitsandbytes_usable(cuda: bool) -> bool:
    if not cuda:
        return False  # a qlora job needs bitsandbytes on CUDA; its CPU kernels are not what it asks for
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def detect() -> dict[str, Any]:
    """This worker's capabilities (measured once per process), with ``PEFTHUB_WORKER_CAPABILITIES`` over them."""
    import torch

    cuda = bool(torch.cuda.is_available())
    count = torch.cuda.device_count() if cuda else 0
    queues = [q for q in os.environ.get(QUEUES_ENV, ",".join(QUEUES)).split(",") if q in QUEUES]
    measured = {
        "cuda": cuda, "gpu_count": count,
        "gpu_memory": [torch.cuda.get_device_properties(i).total_memory for i in range(count)],
        "bitsandbytes": _bitsandbytes_usable(cuda), "torch": torch.__version__.split("+")[0],
        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "queues": queues,
    }
    return check_capabilities({**measured, **capabilities_from_env(os.environ)})


def say_hello_forever(stop: threading.Event, hub: Hub | None = None) -> None:
    """Say hello now, then every ``hello_seconds`` the hub asks for, until ``stop`` is set."""
    client = WorkerClient(hub or Hub(progress=False))
    name, capabilities = worker_name(), detect()
    log.info("worker %s: capabilities %s", name, capabilities)
    wait = 5.0
    while not stop.is_set():
        try:
            reply = client.hello(name, capabilities)
            wait = reply.hello_seconds
            if reply.sent:
                log.info("the hub sent %s waiting job(s) only this worker can run", reply.sent)
        except HubError as exc:  # the hub is briefly unreachable: try again soon
            log.warning("saying hello to the hub failed: %s", exc)
            wait = min(wait, 5.0)
        stop.wait(wait)
