"""A worker's log lines name the job they were logged for: as ``[job <id>]`` in text, as ``job_id`` in JSON."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pefthub.protocol import logs
from pefthub_worker.app import _log_job_ids


def _logger(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger(f"test-worker-logs-{fmt!r}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_lines_logged_during_a_job_carry_its_id_and_others_do_not(monkeypatch, log_format):
    monkeypatch.setenv("PEFTHUB_LOG_FORMAT", log_format)
    logger, out = _logger("[%(levelname)s/%(processName)s] %(message)s")  # Celery's shape
    _log_job_ids(logger=logger)
    logger.info("ready")
    with logs.bound(job_id="8f2c0a"):
        logging.getLogger(logger.name).info("training %s", "lora")
    logger.info("idle")
    lines = out.getvalue().splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [(r["message"], r.get("job_id")) for r in records] == [
            ("ready", None), ("training lora", "8f2c0a"), ("idle", None)]
    else:
        assert lines == ["[INFO/MainProcess] ready", "[INFO/MainProcess] [job 8f2c0a] training lora",
                         "[INFO/MainProcess] idle"]
