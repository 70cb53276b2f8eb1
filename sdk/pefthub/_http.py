"""One HTTP session with retries, and the rule for who gets the token.

The bearer token goes only to the hub's own API. Upload and download URLs the
server hands out are signed (presigned on S3): they get exactly the headers the
server listed, and never ``Authorization``.

A hub that cannot be connected to is retried like any transient failure (a worker
outlives a hub restart), with a warning on the first failure; a client made with
``retry_unreached=False`` (the ``pefthub`` command) instead raises at once when the
hub refuses the first connection it ever tries: nothing is restarting, nobody is there.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from requests.auth import AuthBase
from urllib3.exceptions import NameResolutionError, NewConnectionError

from . import constants as c
from .errors import HubConnectionError, error_from_response

logger = logging.getLogger("pefthub")


class _BearerAuth(AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class _NoAuth(AuthBase):
    """An explicit "no credentials": stops requests from reaching for ~/.netrc."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


def quote_segment(value: str | int) -> str:
    """Quote one URL path segment; ``:`` stays as is (``sha256:<hex>`` revisions)."""
    return quote(str(value), safe=":@")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(seconds, 0.0)


class HTTPClient:
    """Retrying requests against the hub and against the URLs it hands out."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = c.DEFAULT_TIMEOUT,
        max_retries: int = c.DEFAULT_MAX_RETRIES,
        backoff_base: float = c.BACKOFF_BASE,
        backoff_cap: float = c.BACKOFF_CAP,
        retry_unreached: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_unreached = retry_unreached
        # set once the hub has answered: from then on a refused connection is a restart, worth retrying
        self.reached = False
        self.token = token
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.session = requests.Session()
        self.session.headers["User-Agent"] = c.USER_AGENT
        # Swappable in tests so retry timing is asserted, not slept through.
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self.session.close()

    # -- URLs ---------------------------------------------------------------
    def api_url(self, path: str) -> str:
        return f"{self.base_url}{c.API_PREFIX}/{path.lstrip('/')}"

    def absolute(self, url: str) -> str:
        """Resolve a URL the server returned, which may be relative to the hub."""
        return urljoin(self.base_url + "/", url)

    def unreachable(self, why: str) -> str:
        """What to say when no hub answers at ``base_url``: where, why, and how to get one."""
        return (f"no hub answers at {self.base_url} ({why}). Start one with `pefthub-server up`, or point "
                f"{c.ENV_URL} (or `pefthub login --url`) at the hub you mean.")

    # -- retry policy ---------------------------------------------------------
    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))

    def pause(self, attempt: int, retry_after: float | None = None) -> float:
        delay = retry_after if retry_after is not None else self.backoff(attempt)
        self.sleep(delay)
        return delay

    # -- requests -------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        authenticated: bool = False,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send with retries on 429/5xx/connection errors; raise a typed error on >=400.

        ``data`` may be a callable returning a fresh body (an open file) for each
        attempt, so a retried upload starts again from its first byte.
        """
        auth: AuthBase = _BearerAuth(self.token) if authenticated and self.token else _NoAuth()
        attempt = 0
        while True:
            body = data() if callable(data) else data
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=body,
                    headers=dict(headers or {}),
                    auth=auth,
                    timeout=self.timeout,
                    stream=stream,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                to_hub = _origin(url) == _origin(self.base_url)
                why = _not_connected(exc)
                if why and to_hub and not self.reached and not self.retry_unreached:
                    raise HubConnectionError(self.unreachable(why), code="hub_unreachable") from exc
                if attempt >= self.max_retries:
                    raise HubConnectionError(
                        f"could not reach {_origin(url)} after {attempt + 1} attempt(s): {exc}"
                    ) from exc
                if attempt == 0 and why and to_hub:
                    logger.warning("cannot reach %s (%s); retrying up to %d time(s)", self.base_url, why,
                                   self.max_retries)
                delay = self.pause(attempt)
                logger.debug("retrying %s %s in %.2fs after %s", method, url, delay, exc)
                attempt += 1
                continue
            finally:
                close = getattr(body, "close", None)
                if callable(close):
                    close()
            if not self.reached and _origin(url) == _origin(self.base_url):
                self.reached = True
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            # A server that asks for a longer pause than we wait out gets its error raised now.
            waits_out = retry_after is None or retry_after <= c.RETRY_AFTER_CAP
            if response.status_code in c.RETRY_STATUSES and attempt < self.max_retries and waits_out:
                response.close()
                delay = self.pause(attempt, retry_after)
                logger.debug(
                    "retrying %s %s in %.2fs after HTTP %s", method, url, delay, response.status_code
                )
                attempt += 1
                continue
            if response.status_code >= 400:
                try:
                    raise error_from_response(response)
                finally:
                    response.close()
            return response


def _not_connected(exc: Exception) -> str | None:
    """Why no connection was made at all ("connection refused" ...); None when one was made and then failed."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connecting timed out"
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, NameResolutionError):
        return f"host name {reason.conn.host!r} not found" if getattr(reason, "conn", None) else "host name not found"
    if isinstance(reason, NewConnectionError):
        # "HTTPConnection(...): Failed to establish a new connection: [Errno 111] Connection refused"
        text = str(reason).rpartition(": ")[2]
        text = text.split("] ", 1)[-1] if text.startswith("[Errno") else text
        return text[:1].lower() + text[1:] if text else "could not connect"
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
