"""pefthub.protocol.logs: one JSON object per line, carrying the request or job id bound at the time."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from pefthub.protocol import logs


@pytest.fixture
def capture():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("pefthub.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_a_line_is_json_with_time_level_logger_message_and_the_bound_ids(capture):
    logger, lines = capture
    with logs.bound(request_id="r-1"):
        logger.info("pushed %d files", 3)
        with logs.bound(job_id="j-9"):
            logger.warning("slow")
    logger.error("outside")
    first, second, third = lines()
    assert first["message"] == "pushed 3 files" and first["level"] == "INFO"
    assert first["logger"] == "pefthub.test.logs" and first["request_id"] == "r-1" and "job_id" not in first
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert second["request_id"] == "r-1" and second["job_id"] == "j-9"
    assert "request_id" not in third and "job_id" not in third


def test_extra_fields_become_keys_and_a_traceback_is_kept(capture):
    logger, lines = capture
    logger.info("access", extra={"method": "GET", "status": 200, "duration_ms": 1.5, "path": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    access, failed = lines()
    assert (access["method"], access["status"], access["duration_ms"]) == ("GET", 200, 1.5)
    assert access["path"].startswith("<object object")
    assert "ValueError: boom" in failed["exc_info"]


def test_threads_each_see_their_own_context(capture):
    logger, lines = capture
    ready = threading.Barrier(2)

    def work(job: str) -> None:
        with logs.bound(job_id=job):
            ready.wait()
            logger.info("step")

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(line["job_id"] for line in lines()) == ["a", "b"]
    assert logs.current("job_id") is None


def test_an_unknown_context_field_is_refused():
    with pytest.raises(ValueError, match="unknown log context field"), logs.bound(user="alice"):
        pass
