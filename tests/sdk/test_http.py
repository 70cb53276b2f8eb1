"""The HTTP layer against the real hub, through the proxy: retries, backoff, Retry-After, who gets the token."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from pefthub import HubConnectionError, NotFound, RateLimited, ServerError, __version__
from pefthub._http import HTTPClient, parse_retry_after

from .proxy import error
from .state import sha

WHOAMI = "/api/v1/whoami"


def api_get(http: HTTPClient, path: str):
    return http.request("GET", http.api_url(path), authenticated=True)


@pytest.fixture
def client(proxy, alice):
    """``client(sleeps, **kwargs)``: an HTTPClient for alice through the proxy, pausing into ``sleeps``."""
    made: list[HTTPClient] = []

    def make(sleeps: list[float], **kwargs) -> HTTPClient:
        http = HTTPClient(proxy.url, alice.token, **kwargs)
        http.sleep = sleeps.append
        made.append(http)
        return http

    yield make
    for http in made:
        http.close()


def test_retry_after_is_honoured_on_429(proxy, client):
    sleeps: list[float] = []
    proxy.reply("GET", WHOAMI, error(429, "throttled", "slow down", **{"Retry-After": "2"}))
    proxy.reply("GET", WHOAMI, error(429, "throttled", "slow down", **{"Retry-After": "7"}))
    http = client(sleeps)
    assert api_get(http, "whoami").json()["username"] == "alice"
    assert sleeps == [2.0, 7.0]
    assert len(proxy.requests("GET", WHOAMI)) == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_retries_with_jittered_backoff_then_gives_up(proxy, client, status):
    sleeps: list[float] = []
    proxy.reply("GET", WHOAMI, error(status, "oops", "broken"), times=None)
    http = client(sleeps, max_retries=4)
    with pytest.raises(ServerError) as info:
        api_get(http, "whoami")
    assert info.value.status == status
    assert len(proxy.requests("GET", WHOAMI)) == 5  # 1 + 4 retries
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(20.0, 0.5 * 2**attempt)


def test_429_after_every_retry_is_rate_limited(proxy, client):
    sleeps: list[float] = []
    proxy.reply("GET", WHOAMI, error(429, "throttled", "slow", **{"Retry-After": "1"}), times=None)
    with pytest.raises(RateLimited):
        api_get(client(sleeps, max_retries=2), "whoami")
    assert sleeps == [1.0, 1.0]


def test_4xx_is_not_retried(proxy, client):
    sleeps: list[float] = []
    with pytest.raises(NotFound):
        api_get(client(sleeps), "repos/acme/nope")
    assert sleeps == [] and len(proxy.requests()) == 1


def test_backoff_is_full_jitter_capped(monkeypatch):
    http = HTTPClient("http://x", None)
    monkeypatch.setattr("random.uniform", lambda low, high: high)  # the top of each window
    assert [http.backoff(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    monkeypatch.setattr("random.uniform", lambda low, high: low)
    assert http.backoff(5) == 0.0


def test_token_goes_to_the_api_only_and_user_agent_everywhere(proxy, client, alice, seed):
    seed.hub.create_repo("acme/data", kind="dataset")
    http = client([])
    plan = http.request("POST", http.api_url("repos/acme/data/uploads"), authenticated=True,
                        json={"files": [{"path": "a.txt", "sha256": sha(b"abc"), "size": 3}]}).json()
    [target] = plan["missing"]
    http.request("PUT", target["upload"]["url"], data=b"abc", headers={**target["upload"]["headers"], "X-Sig": "s"})
    api_req, upload_req = proxy.requests()
    assert api_req.header("Authorization") == f"Bearer {alice.token}"
    assert upload_req.header("Authorization") is None and upload_req.status == 201  # the signed URL was enough
    assert upload_req.header("X-Sig") == "s" and upload_req.body == b"abc"
    assert api_req.header("User-Agent") == upload_req.header("User-Agent") == f"pefthub/{__version__}"


def test_no_token_sends_no_authorization(proxy):
    http = HTTPClient(proxy.url, None)
    api_get(http, "repos")
    http.close()
    assert proxy.requests()[0].header("Authorization") is None


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("99999") == 99999.0  # the client decides whether to wait it out
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(later) <= 30


def test_relative_urls_resolve_against_the_hub():
    http = HTTPClient("http://hub.example:8000/prefix/", None)
    assert http.api_url("repos") == "http://hub.example:8000/prefix/api/v1/repos"
    assert http.absolute("/api/v1/blobs/ab?sig=1") == "http://hub.example:8000/api/v1/blobs/ab?sig=1"
    assert http.absolute("https://s3.example/b/k?X-Amz=1") == "https://s3.example/b/k?X-Amz=1"


def _closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_hub_refusing_the_first_connection_is_said_at_once_with_retry_unreached_false():
    port = _closed_port()
    sleeps: list[float] = []
    http = HTTPClient(f"http://127.0.0.1:{port}", "tok", retry_unreached=False)
    http.sleep = sleeps.append
    with pytest.raises(HubConnectionError) as info:
        api_get(http, "whoami")
    assert sleeps == [] and info.value.code == "hub_unreachable"
    assert info.value.message == (
        f"no hub answers at http://127.0.0.1:{port} (connection refused). Start one with `pefthub-server up`, "
        "or point PEFTHUB_URL (or `pefthub login --url`) at the hub you mean.")
    http = HTTPClient("http://no-such-host.invalid", "tok", retry_unreached=False)
    http.sleep = sleeps.append
    with pytest.raises(HubConnectionError, match=r"no hub answers at http://no-such-host.invalid \(host name "
                                                 r"'no-such-host.invalid' not found\)"):
        api_get(http, "whoami")
    assert sleeps == []


def test_once_the_hub_answered_a_refused_connection_is_retried_as_a_restart():
    """A command's later requests (a push's commit after its uploads) outlive a hub restart."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sleeps: list[float] = []
    http = HTTPClient(f"http://127.0.0.1:{server.server_address[1]}", "tok", retry_unreached=False, max_retries=2)
    http.sleep = sleeps.append
    assert api_get(http, "whoami").status_code == 200
    server.shutdown()
    server.server_close()
    http.session.close()  # a fresh connection, to the closed port
    with pytest.raises(HubConnectionError, match="after 3 attempt"):
        api_get(http, "whoami")
    assert len(sleeps) == 2


def test_by_default_connection_errors_are_retried_with_a_warning_then_raised(caplog):
    port = _closed_port()
    sleeps: list[float] = []
    http = HTTPClient(f"http://127.0.0.1:{port}", "tok", max_retries=2)
    http.sleep = sleeps.append
    with caplog.at_level("WARNING", logger="pefthub"), pytest.raises(HubConnectionError, match="after 3 attempt"):
        api_get(http, "whoami")
    assert len(sleeps) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot reach http://127.0.0.1:{port} (connection refused); retrying up to 2 time(s)"]
