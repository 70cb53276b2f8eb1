"""gunicorn's settings and hooks for `pefthub-server serve` (``gunicorn -c python:pefthub_server.gunicorn_conf``).

`serve` gives the listen address, workers and threads on the command line; what is fixed
lives here. Imported by gunicorn's master, which never loads Django: the hooks that need the
hub import it in the worker, where the application is loaded.
"""

from __future__ import annotations

import os
import shutil

worker_class = "gthread"
# TCP_NODELAY: gunicorn sets it on every TCP listener, and accepted sockets inherit it (no 40 ms
# Nagle + delayed-ACK floor on keep-alive answers: measured 1.7 ms for GET /api/v1/).
# Proxy headers are waitress's proxy_headers_middleware's job (server.production_application),
# for `up` and `serve` alike: gunicorn trusts no one's.
forwarded_allow_ips = ""
# Idle keep-alive connections stay open longer than a load balancer's usual 60 s idle timeout,
# so the balancer closes them first and never sends on a connection gunicorn just closed.
keepalive = 65
graceful_timeout = 30
timeout = 120
limit_request_line = 8190
accesslog = None  # the hub writes its own access line (core.middleware.AccessMiddleware), with the request id
errorlog = "-"
proc_name = "pefthub-server"
# gunicorn 27's control socket lives in $HOME (one per user: two servers would fight over it, and a
# container's home may be read-only); signals do what the hub needs (HUP reload, TERM stop).
control_socket_disable = True

if os.environ.get("PEFTHUB_LOG_FORMAT", "json") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pefthub.protocol.logs.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False}},
    }


def pre_request(worker, req) -> None:
    """Before gunicorn answers ``Expect: 100-continue``: no "100 Continue" to a body the hub will refuse, and close after."""
    from pefthub_server.server import refuses_body

    headers = {name: value for name, value in req.headers}
    too_large, close = refuses_body(req.method, req.path, req.query, headers)
    if too_large:
        req._expected_100_continue = False  # gunicorn's flag: the client keeps its body
    if close:
        req.must_close = True


def child_exit(server, worker) -> None:
    """A worker's live gauges go with it; its counters stay in the metrics folder, so totals survive a reload."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics folder `serve` made for this server."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and os.environ.get("PEFTHUB_METRICS_DIR_OWNED") == "1":
        shutil.rmtree(folder, ignore_errors=True)
