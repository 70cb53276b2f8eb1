"""`pefthub-worker`: run a Celery worker for the `gpu` and/or `cpu` queues."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int) -> None:
    """Die when process ``parent`` (`pefthub-server up`) dies, even by SIGKILL: no orphan worker.

    Linux kills us with the parent (PR_SET_PDEATHSIG); elsewhere, or if that fails, a
    thread notices the parent changed within a second.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # it died before we asked to follow it

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def quiet_logs() -> None:
    """Keep the worker's log to what an operator acts on: jobs, their steps, failures.

    Left out: Celery's banner; its warning about running as root (it is about unpickling
    messages as root, and these queues accept JSON only); progress bars, which Celery would log line by
    line as warnings; bitsandbytes' note that an optional faster CPU kernel did not load
    (QLoRA runs on its own kernel); and transformers' deprecation of an attribute peft reads.
    """
    import logging
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, message="`is_gradient_checkpointing` is deprecated")
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "PEFTHUB_DISABLE_PROGRESS_BARS"):
        os.environ[name] = "1"
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pefthub-worker",
        description="Run PEFT Hub jobs. Needs PEFTHUB_URL and a worker-scope PEFTHUB_TOKEN; "
        "CELERY_BROKER_URL (default: the embedded filesystem broker in PEFTHUB_DATA_DIR).",
    )
    parser.add_argument("--queues", "-Q", default="gpu,cpu", help="comma-separated queues (default: gpu,cpu)")
    parser.add_argument("--concurrency", "-c", type=int, default=1, help="jobs at a time (default: 1, one per GPU)")
    parser.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"],
                        help="solo runs jobs in this process (default); prefork in child processes")
    parser.add_argument("--loglevel", "-l", default=os.environ.get("PEFTHUB_LOG_LEVEL", "info"))
    parser.add_argument("--hostname", "-n", default=None,
                        help="the worker's name: its Celery node name, and `worker` on the jobs it claims (default host:pid)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="CPU threads per job (default: OMP_NUM_THREADS, else cores / concurrency: no oversubscription)")
    args = parser.parse_args(argv)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    threads = args.torch_threads or (int(omp) if omp.isdigit() and int(omp) > 0 else 0) \
        or max(1, (os.cpu_count() or 1) // max(1, args.concurrency))
    os.environ["PEFTHUB_TORCH_THREADS"] = str(threads)
    if not os.environ.get("PEFTHUB_TOKEN"):
        parser.error("PEFTHUB_TOKEN must hold a worker-scope token (pefthub-server adduser worker --scope worker)")
    from pefthub.protocol.capabilities import capabilities_from_env
    from pefthub.protocol.errors import SpecError
    from pefthub_worker.training.recipe import checkpoint_seconds

    try:
        capabilities_from_env(os.environ)  # a bad override stops the worker here, not at its first job
        checkpoint_seconds(os.environ)
    except SpecError as exc:
        parser.error(exc.message)
    if parent := os.environ.get("PEFTHUB_EXIT_WITH_PARENT"):  # set by `pefthub-server up`
        exit_with_parent(int(parent))
    quiet_logs()

    from pefthub.protocol.capabilities import direct_queue
    from pefthub_worker.app import app
    from pefthub_worker.capabilities import NAME_ENV, QUEUES_ENV, worker_name

    os.environ[QUEUES_ENV] = args.queues
    if args.hostname:
        os.environ[NAME_ENV] = args.hostname
    os.environ[NAME_ENV] = worker_name()  # the pool's processes, if any, claim under this one name
    # its direct queue: the hub sends it the jobs only it (of the workers on its queues) can run
    queues = f"{args.queues},{direct_queue(os.environ[NAME_ENV])}"
    worker_args = ["--quiet", "worker", "-Q", queues, "--concurrency", str(args.concurrency), "--pool", args.pool,
                   "--loglevel", args.loglevel, "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"]
    if args.hostname:
        worker_args += ["--hostname", args.hostname]
    app.worker_main(worker_args)


if __name__ == "__main__":
    main()
