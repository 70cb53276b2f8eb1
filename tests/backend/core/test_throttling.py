"""Failed authentication is rate-limited per client address and per token prefix (core.throttling).

Only failures count, and only failing attempts are refused: a valid token keeps working
from a throttled address, and anonymous reads are not authentication attempts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone

from pefthub_server.core.models import ApiToken
from pefthub_server.core.throttling import ADDRESS_SCOPE, PREFIX_SCOPE

ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = os.environ.get("PEFTHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WRONG = "phub_" + "w" * 43


@pytest.fixture
def rates(settings):
    """``rates(per_address, per_prefix)``: set the failure rates, on an empty cache."""

    def set_rates(per_address: str = "3/min", per_prefix: str = "100/min") -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {ADDRESS_SCOPE: per_address, PREFIX_SCOPE: per_prefix},
        }

    cache.clear()
    set_rates()
    yield set_rates
    cache.clear()


def whoami(api, token: str | None, address: str = "10.0.0.1", **extra):
    return api(token).get("/api/v1/whoami", REMOTE_ADDR=address, **extra)


def assert_throttled(response, *words: str) -> int:
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["code"] == "throttled"
    assert all(word in error["message"] for word in words), error["message"]
    wait = int(response["Retry-After"])
    assert 0 < wait <= 60
    return wait


def test_failures_from_one_address_get_429_and_a_valid_token_still_works(alice, api, rates):
    for token in (WRONG, "phub_" + "x" * 43, "not-even-a-hub-token"):
        assert whoami(api, token).status_code == 401

    assert_throttled(whoami(api, WRONG), "10.0.0.1", "failed")
    # A valid token is not a guess: it works from the throttled address (see core.throttling).
    assert whoami(api, alice.token).status_code == 200
    assert api().get("/api/v1/repos", REMOTE_ADDR="10.0.0.1").status_code == 200  # anonymous: no attempt
    # Another address is not throttled, and a forged X-Forwarded-For does not make one.
    assert whoami(api, WRONG, "10.0.0.2").status_code == 401
    assert_throttled(whoami(api, WRONG, HTTP_X_FORWARDED_FOR="10.9.9.9"))


def test_malformed_revoked_and_expired_tokens_count_as_failures(alice, api, rates):
    revoked = alice.new_token("read", name="old")
    ApiToken.objects.filter(name="old").update(revoked_at=timezone.now())
    expired = alice.new_token("read", name="short", expires_in_days=1)
    ApiToken.objects.filter(name="short").update(expires_at=timezone.now() - timedelta(seconds=1))

    assert api().get("/api/v1/whoami", REMOTE_ADDR="10.0.0.1", HTTP_AUTHORIZATION="Basic YWxpY2U6cHc=").status_code == 401
    assert whoami(api, revoked).status_code == 401
    assert whoami(api, expired).status_code == 401
    assert_throttled(api().get("/api/v1/whoami", REMOTE_ADDR="10.0.0.1", HTTP_AUTHORIZATION="Bearer"))


def test_guesses_for_one_token_prefix_from_many_addresses_get_429(alice, api, rates):
    rates(per_address="100/min", per_prefix="5/min")
    guess = alice.token[:12] + "g" * 36
    for n in range(5):
        assert whoami(api, guess, f"10.0.1.{n}").status_code == 401

    assert_throttled(whoami(api, guess, "10.0.1.99"), alice.token[:12])
    assert whoami(api, WRONG, "10.0.1.99").status_code == 401  # another prefix
    assert whoami(api, alice.token, "10.0.1.99").status_code == 200  # the real token behind that prefix


def test_attempts_are_allowed_again_once_the_window_passes(api, rates, db):
    rates(per_address="2/s")
    assert [whoami(api, WRONG).status_code for _ in range(2)] == [401, 401]
    assert_throttled(whoami(api, WRONG))
    time.sleep(1.1)
    assert whoami(api, WRONG).status_code == 401


def test_hf_api_answers_429_in_the_hub_error_shape(alice, client, rates):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {WRONG}", "REMOTE_ADDR": "10.0.0.1"}
    for _ in range(3):
        assert client.get("/hf/api/models/acme/x", **headers).status_code == 401

    response = client.get("/hf/api/models/acme/x", **headers)
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60
    assert "failed" in response.json()["error"] and response["X-Error-Message"] == response.json()["error"]
    ok = client.get("/hf/api/models/acme/x", HTTP_AUTHORIZATION=f"Bearer {alice.token}", REMOTE_ADDR="10.0.0.1")
    assert ok.status_code == 404 and ok["X-Error-Code"] == "RepoNotFound"


def test_sdk_gives_up_at_once_when_told_to_wait_longer_than_it_waits(live_server, transactional_db, rates, open_hub):
    from pefthub import AuthenticationFailed, RateLimited

    rates(per_address="2/hour")
    hub = open_hub(url=live_server.url, token=WRONG)
    sleeps: list[float] = []
    hub._http.sleep = sleeps.append
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            hub.whoami()

    with pytest.raises(RateLimited) as info:
        hub.whoami()
    assert sleeps == []
    assert info.value.code == "throttled" and "failed" in info.value.message


def _server_settings(**env: str) -> dict:
    code = ("import json, django; django.setup(); from django.conf import settings; "
            "print(json.dumps({'cache': settings.CACHES['default'], 'rates': settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cache_and_rates_come_from_env():
    default = _server_settings()
    assert default["cache"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
    assert default["rates"] == {ADDRESS_SCOPE: "20/min", PREFIX_SCOPE: "20/min"}
    shared = _server_settings(PEFTHUB_CACHE_URL=REDIS_URL, PEFTHUB_AUTH_FAIL_RATE="5/hour",
                              PEFTHUB_AUTH_FAIL_PREFIX_RATE="50/day")
    assert shared["cache"] == {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    assert shared["rates"] == {ADDRESS_SCOPE: "5/hour", PREFIX_SCOPE: "50/day"}


@pytest.mark.parametrize("value", ["lots", "5", "5/fortnight", "-1/min", "0/min"])
def test_a_bad_rate_fails_start_up_naming_the_variable(value):
    code = "import django; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PEFTHUB_AUTH_FAIL_RATE": value})
    assert result.returncode != 0
    assert f"PEFTHUB_AUTH_FAIL_RATE={value!r}" in result.stderr and "20/min" in result.stderr


def test_server_processes_share_counts_through_redis(api, rates, settings, db):
    """Failures seen by another server process (same PEFTHUB_CACHE_URL) throttle this one."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    cache.clear()
    other = ("import django; django.setup(); from django.test import Client; "
             "print([Client().get('/api/v1/whoami', REMOTE_ADDR='10.0.7.7', HTTP_AUTHORIZATION='Basic eA==').status_code "
             "for _ in range(3)])")
    result = subprocess.run([sys.executable, "-c", other], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PEFTHUB_CACHE_URL": REDIS_URL,
                                 "PEFTHUB_AUTH_FAIL_RATE": "3/min"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[401, 401, 401]"

    assert_throttled(whoami(api, WRONG, "10.0.7.7"))
    assert whoami(api, WRONG, "10.0.7.8").status_code == 401
