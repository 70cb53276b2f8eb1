"""API tokens (core.tokens, core.auth): revoked and expired tokens get 401, secrets are stored hashed, scopes never grow."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from pefthub_server.core.models import ApiToken


def test_revoked_and_expired_tokens_get_401(alice, api):
    client = api(alice.token)
    created = client.post("/api/v1/tokens", {"name": "ci", "scope": "read"}, format="json").json()
    secret = created["token"]
    assert api(secret).get("/api/v1/whoami").status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    response = api(secret).get("/api/v1/whoami")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"
    assert "revoked" in response.json()["error"]["message"]
    expiring = alice.new_token("read", expires_in_days=1)
    ApiToken.objects.filter(user=alice.user, scope="read", revoked_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert api(expiring).get("/api/v1/repos").status_code == 401
    assert api("phub_not-a-real-token").get("/api/v1/repos").status_code == 401


def test_tokens_are_stored_hashed(alice, api):
    created = api(alice.token).post("/api/v1/tokens", {"name": "x", "scope": "write"}, format="json").json()
    secret = created["token"]
    for row in ApiToken.objects.values():
        assert all(secret not in str(value) for value in row.values())
    listed = api(alice.token).get("/api/v1/tokens").json()
    assert all("token" not in t for t in listed) and secret[:12] in {t["prefix"] for t in listed}


def test_token_cannot_mint_a_higher_scope(alice, api):
    read_client = api(alice.new_token("write"))
    assert read_client.post("/api/v1/tokens", {"scope": "admin"}, format="json").status_code == 403
    assert read_client.post("/api/v1/tokens", {"scope": "read"}, format="json").status_code == 201


def test_only_staff_hold_worker_tokens(alice, api):
    refused = api(alice.new_token("admin")).post("/api/v1/tokens", {"scope": "worker"}, format="json")
    assert refused.status_code == 403 and "not staff" in refused.json()["error"]["message"]
    alice.user.is_staff = True
    alice.user.save()
    assert api(alice.new_token("write")).post("/api/v1/tokens", {"scope": "worker"}, format="json").status_code == 403
    minted = api(alice.new_token("admin")).post("/api/v1/tokens", {"scope": "worker"}, format="json")
    assert minted.status_code == 201 and minted.json()["scope"] == "worker"
    worker = api(minted.json()["token"])
    assert worker.post("/api/v1/tokens", {"scope": "read"}, format="json").status_code == 403  # it only claims
    assert worker.post("/api/v1/repos", {"namespace": "acme", "name": "x", "kind": "dataset"}, format="json").status_code == 403
    alice.user.is_staff = False
    alice.user.save()
    claim = worker.post("/api/v1/jobs/" + "0" * 32 + "/claim", {"worker": "w"}, format="json")
    assert claim.status_code == 403  # a user who stopped being staff keeps no worker rights


def test_adduser_with_scope_worker_makes_an_operator_not_a_superuser(db, api):
    from io import StringIO

    from django.contrib.auth import get_user_model

    out = StringIO()
    call_command("adduser", "gpu-node", "--scope", "worker", stdout=out, stderr=StringIO())
    user = get_user_model().objects.get(username="gpu-node")
    assert user.is_staff and not user.is_superuser
    assert ApiToken.objects.get(user=user).scope == "worker"
    with pytest.raises(CommandError, match="invalid choice: 'job'"):
        call_command("adduser", "gpu-node", "--scope", "job", stdout=StringIO(), stderr=StringIO())


@pytest.mark.parametrize("days", [0, -1, 3651, 3_000_000])
def test_expires_in_days_outside_1_to_3650_is_a_400_naming_the_bound(alice, api, days):
    response = api(alice.token).post("/api/v1/tokens", {"scope": "read", "expires_in_days": days}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert "expires_in_days" in error["message"] and "3650" in error["message"] and str(days) in error["message"]


def test_a_ten_year_token_is_fine_and_a_job_token_cannot_be_asked_for(alice, api):
    client = api(alice.token)
    assert client.post("/api/v1/tokens", {"scope": "read", "expires_in_days": 3650}, format="json").status_code == 201
    asked = client.post("/api/v1/tokens", {"scope": "job"}, format="json")
    assert asked.status_code == 400 and "scope" in json.dumps(asked.json())
