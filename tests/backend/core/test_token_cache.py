"""The token cache (core.tokens.token_by_secret): a client's requests cost no token query; a revocation made in this
process holds at once, one made elsewhere within PEFTHUB_TOKEN_CACHE_SECONDS; expiry holds on every request; job
tokens are never kept; a token's last use is written at most once a minute."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pefthub_server.core.models import ApiToken


def token_queries(client, path: str = "/api/v1/whoami") -> tuple[int, list[str]]:
    """(status, the SQL of its token lookups and last-use writes) of one request."""
    with CaptureQueriesContext(connection) as ctx:
        status = client.get(path).status_code
    return status, [q["sql"] for q in ctx.captured_queries if ('"core_apitoken"' in q["sql"] and "secret_hash" in q["sql"])
                    or q["sql"].startswith('UPDATE "core_apitoken"')]


def test_a_known_token_costs_no_query_and_its_last_use_is_written_once(alice, api, settings):
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 3600  # however slow this machine, the next requests find it kept
    client = api(alice.new_token("read", name="ci"))
    status, first = token_queries(client)
    assert status == 200 and len(first) == 2  # looked up, its first use written
    for _ in range(5):
        assert token_queries(client) == (200, [])
    assert ApiToken.objects.get(name="ci").last_used_at is not None


def test_with_the_cache_off_every_request_looks_the_token_up(alice, api, settings):
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 0
    client = api(alice.new_token("read"))
    token_queries(client)
    status, queries = token_queries(client)
    assert status == 200 and len(queries) == 1  # looked up; its last use is a minute away


def test_a_revocation_in_this_process_holds_at_once(alice, api):
    owner = api(alice.token)
    created = owner.post("/api/v1/tokens", {"name": "ci", "scope": "read"}, format="json").json()
    client = api(created["token"])
    assert client.get("/api/v1/whoami").status_code == 200 and client.get("/api/v1/whoami").status_code == 200
    assert owner.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    refused = client.get("/api/v1/whoami")
    assert refused.status_code == 401 and "was revoked" in refused.json()["error"]["message"]


def test_a_revocation_in_another_process_holds_within_the_cache_lifetime(alice, api, settings):
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 1
    client = api(alice.new_token("read", name="elsewhere"))
    assert client.get("/api/v1/whoami").status_code == 200
    ApiToken.objects.filter(name="elsewhere").update(revoked_at=timezone.now())  # as another process revokes it
    assert client.get("/api/v1/whoami").status_code == 200  # this process still knows it as valid...
    time.sleep(1.1)
    assert client.get("/api/v1/whoami").status_code == 401  # ...for one second at most


def test_a_kept_token_expires_on_time(alice, api, settings):
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 3600
    client = api(alice.new_token("read", name="short", expires_in_days=1))
    ApiToken.objects.filter(name="short").update(expires_at=timezone.now() + timedelta(seconds=0.5))
    assert client.get("/api/v1/whoami").status_code == 200
    time.sleep(0.6)
    refused = client.get("/api/v1/whoami")
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]


@pytest.mark.parametrize("change", ["deactivate", "revoke"])
def test_a_kept_token_found_invalid_is_looked_up_again(alice, api, settings, change):
    """Expiry aside, a kept token is only as fresh as the cache's lifetime: past it, the database decides."""
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 1
    client = api(alice.new_token("read", name="t"))
    assert client.get("/api/v1/whoami").status_code == 200
    if change == "deactivate":
        type(alice.user).objects.filter(pk=alice.user.pk).update(is_active=False)
    else:
        ApiToken.objects.filter(name="t").update(revoked_at=timezone.now())
    time.sleep(1.1)
    status, queries = token_queries(client)
    assert status == 401 and len(queries) == 1


def test_job_tokens_are_never_kept(alice, api):
    from pefthub_server.core.tokens import job_token_create

    secret = job_token_create(user=alice.user, name="job:x", expires_at=timezone.now() + timedelta(hours=1))[1]
    client = api(secret)
    token_queries(client, "/api/v1/repos")
    status, queries = token_queries(client, "/api/v1/repos")
    assert status == 403 and len(queries) == 1  # looked up every time (no job: refused), never from the cache
