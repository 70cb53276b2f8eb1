from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from pefthub import HubConnectionError, NotFound, RateLimited, ServerError, __version__
from pefthub._http import HTTPClient, parse_retry_after

from .fakes import TOKEN, Reply, error

WHO = {"username": "alice"}


def api_get(http: HTTPClient, path: str):
    return http.request("GET", http.api_url(path), authenticated=True)


def flaky(replies):
    """A handler answering each reply in turn, then 200 ``WHO`` for ever."""
    replies = list(replies)

    def handler(seen, match):
        return replies.pop(0) if replies else Reply(200, WHO)

    return handler


def client(server, sleeps, **kwargs) -> HTTPClient:
    http = HTTPClient(server.url, TOKEN, **kwargs)
    http.sleep = sleeps.append
    return http


def test_retry_after_is_honoured_on_429(server):
    sleeps: list[float] = []
    server.route("GET", "/api/v1/whoami", flaky([
        error(429, "throttled", "slow down", **{"Retry-After": "2"}),
        error(429, "throttled", "slow down", **{"Retry-After": "7"}),
    ]))
    http = client(server, sleeps)
    assert api_get(http, "whoami").json() == WHO
    assert sleeps == [2.0, 7.0]
    assert len(server.requests("GET", "/api/v1/whoami")) == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_retries_with_jittered_backoff_then_gives_up(server, status):
    sleeps: list[float] = []
    server.route("GET", "/api/v1/whoami", lambda s, m: error(status, "oops", "broken"))
    http = client(server, sleeps, max_retries=4)
    with pytest.raises(ServerError) as info:
        api_get(http, "whoami")
    assert info.value.status == status
    assert len(server.requests("GET", "/api/v1/whoami")) == 5  # 1 + 4 retries
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(20.0, 0.5 * 2**attempt)


def test_429_after_every_retry_is_rate_limited(server):
    sleeps: list[float] = []
    server.route("GET", "/api/v1/whoami", lambda s, m: error(429, "throttled", "slow", **{"Retry-After": "1"}))
    with pytest.raises(RateLimited):
        api_get(client(server, sleeps, max_retries=2), "whoami")
    assert sleeps == [1.0, 1.0]


def test_4xx_is_not_retried(server):
    sleeps: list[float] = []
    with pytest.raises(NotFound):
        api_get(client(server, sleeps), "repos/acme/nope")
    assert sleeps == [] and len(server.requests()) == 1


def test_backoff_is_full_jitter_capped(monkeypatch):
    http = HTTPClient("http://x", None)
    monkeypatch.setattr("random.uniform", lambda low, high: high)  # the top of each window
    assert [http.backoff(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    monkeypatch.setattr("random.uniform", lambda low, high: low)
    assert http.backoff(5) == 0.0


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    http = HTTPClient(f"http://127.0.0.1:{port}", TOKEN, max_retries=3, timeout=5)
    http.sleep = sleeps.append
    with pytest.raises(HubConnectionError, match="after 4 attempt"):
        api_get(http, "whoami")
    assert len(sleeps) == 3


def test_token_goes_to_the_api_only_and_user_agent_everywhere(server):
    server.route("PUT", "/upload/x", lambda s, m: Reply(201, {}))
    server.route("GET", "/api/v1/whoami", lambda s, m: Reply(200, WHO))
    http = client(server, [])
    api_get(http, "whoami")
    http.request("PUT", f"{server.url}/upload/x?sig=1", data=b"abc", headers={"X-Sig": "s"})
    api_req, upload_req = server.requests()
    assert api_req.header("Authorization") == f"Bearer {TOKEN}"
    assert upload_req.header("Authorization") is None
    assert upload_req.header("X-Sig") == "s" and upload_req.body == b"abc"
    assert api_req.header("User-Agent") == upload_req.header("User-Agent") == f"pefthub/{__version__}"


def test_no_token_sends_no_authorization(server):
    server.route("GET", "/api/v1/repos", lambda s, m: Reply(200, []))
    api_get(HTTPClient(server.url, None), "repos")
    assert server.requests()[0].header("Authorization") is None


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999") == 300.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(later) <= 30


def test_relative_urls_resolve_against_the_hub():
    http = HTTPClient("http://hub.example:8000/prefix/", None)
    assert http.api_url("repos") == "http://hub.example:8000/prefix/api/v1/repos"
    assert http.absolute("/api/v1/blobs/ab?sig=1") == "http://hub.example:8000/api/v1/blobs/ab?sig=1"
    assert http.absolute("https://s3.example/b/k?X-Amz=1") == "https://s3.example/b/k?X-Amz=1"
