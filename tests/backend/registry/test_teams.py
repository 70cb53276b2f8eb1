"""Teams and the caller (registry.teams, registry.api.people): members, roles, the last admin, whoami."""

from __future__ import annotations

import pytest


def test_teams_and_members(alice, bob, carol, api):
    client = api(alice.token)
    assert client.get("/api/v1/teams").json() == [{"name": "acme", "role": "admin", "member_count": 2}]
    assert client.post("/api/v1/teams/acme/members", {"username": "carol", "role": "read"}, format="json").status_code == 201
    assert api(carol.token).get("/api/v1/teams/acme").json()["role"] == "read"
    assert api(bob.token).post("/api/v1/teams/acme/members", {"username": "x"}, format="json").status_code == 403
    assert client.patch("/api/v1/teams/acme/members/carol", {"role": "write"}, format="json").json()["role"] == "write"
    assert client.delete("/api/v1/teams/acme/members/carol").status_code == 204
    assert api(carol.token).get("/api/v1/teams/acme").status_code == 404
    # the last admin cannot leave
    response = client.delete("/api/v1/teams/acme/members/alice")
    assert response.status_code == 400 and "last admin" in response.json()["error"]["message"]
    made = api(carol.token).post("/api/v1/teams", {"name": "carolco"}, format="json")
    assert made.status_code == 201 and api(carol.token).get("/api/v1/teams").json()[0]["name"] == "carolco"
    assert api(carol.token).post("/api/v1/teams", {"name": "acme"}, format="json").status_code == 409


def test_root_and_whoami(alice, api):
    assert "repos" in api().get("/api/v1/").json()["links"]
    me = api(alice.token).get("/api/v1/whoami").json()
    assert me["username"] == "alice" and me["teams"] == [{"name": "acme", "role": "admin"}]
    assert me["token"]["scope"] == "write"
    assert api().get("/api/v1/whoami").status_code == 401


def test_names_of_the_hubs_own_addresses_are_refused_for_new_users_and_teams(carol, api):
    from pefthub_server.core.errors import ValidationFailed
    from pefthub_server.registry.teams import reserved_names, user_ensure

    # read from the URL conf: the API, the HF API, the admin, static files, web pages and the operations probes
    assert {"api", "hf", "admin", "static", "jobs", "account", "healthz", "readyz", "metrics"} <= reserved_names()
    for name in ("metrics", "Jobs", "healthz"):
        refused = api(carol.token).post("/api/v1/teams", {"name": name}, format="json")
        assert refused.status_code == 400, name
        assert f"/{name.lower()}" in refused.json()["error"]["message"]
    with pytest.raises(ValidationFailed, match="hub's own addresses"):
        user_ensure(username="readyz")
    assert api(carol.token).post("/api/v1/teams", {"name": "metrics-team"}, format="json").status_code == 201
