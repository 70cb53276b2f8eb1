"""One log line format for the server and the workers: a JSON object per line, with the request or job it served.

Standard library only. The server sets the request id for the duration of a request; a worker
sets the job id for the duration of a job; every record logged meanwhile, by any logger, carries
it::

    from pefthub.protocol import logs

    handler = logging.StreamHandler()
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    with logs.bound(job_id="8f2…"):
        log.info("claimed")     # {"time": …, "level": "INFO", …, "job_id": "8f2…"}

The context lives in :mod:`contextvars`, so threads and asyncio tasks each see their own.
Fields a record is given with ``extra={...}`` (the access log's ``method``, ``route``,
``status``…) are written as top-level keys too.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
from collections.abc import Iterator

#: The context fields a record can carry; absent ones are left out of the line.
CONTEXT_FIELDS = ("request_id", "job_id")

_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"pefthub_{name}", default=None) for name in CONTEXT_FIELDS
}

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def current(name: str) -> str | None:
    """The value of a context field (``request_id`` or ``job_id``) in this thread or task, or None."""
    return _context[name].get()


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Set context fields for the duration of the block; the previous values come back after it."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s) {sorted(unknown)}; known: {list(CONTEXT_FIELDS)}")
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context fields onto each record (as attributes); never drops a record.

    Attach it to the handler, so records of every logger (Django's, Celery's, ours) get it.
    A field already set on the record by ``extra=`` is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, _context[name].get())
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON.

    Keys: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, then
    the context fields that are set, then the record's ``extra`` fields, then ``exc_info``
    (the formatted traceback) when there is one. Values JSON cannot hold are written with ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = _context[name].get()
            if value is not None:
                line[name] = value
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in line and key not in CONTEXT_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)
