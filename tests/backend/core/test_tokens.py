"""API tokens (core.tokens, core.auth): revoked and expired tokens get 401, secrets are stored hashed, scopes never grow."""

from __future__ import annotations

from datetime import timedelta

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
