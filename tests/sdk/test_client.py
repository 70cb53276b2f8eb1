"""The read/admin calls: right method, path and body; answers parsed into objects."""

from __future__ import annotations

import json

import pytest

from pefthub import Conflict, Repo, Version

from .fakes import Reply


def test_repos_follows_pages_by_query_only(make_hub, fake_hub, server):
    for i in range(7):
        fake_hub.add_version(f"acme/r{i}", {"train.jsonl": b"{}\n"}, kind="dataset")

    repos = list(make_hub().repos(kind="dataset", search="r", page_size=3))

    assert [r.id for r in repos] == [f"acme/r{i}" for i in range(7)]
    assert all(isinstance(r, Repo) and r.kind == "dataset" and r.latest_version == 1 for r in repos)
    queries = [s.query for s in server.requests("GET", "/api/v1/repos")]
    assert [q.get("page") for q in queries] == [None, "2", "3"]
    # the `next` links name another host: only their query was used
    assert queries[0] == {"kind": "dataset", "search": "r", "page_size": "3"}
    assert repos[0].raw["namespace"] == "acme"


def test_create_repo_and_exist_ok(make_hub, fake_hub, server):
    hub = make_hub()
    repo = hub.create_repo("acme/bot", kind="adapter", base_model="acme/llama-tiny@2", description="d")
    assert (repo.id, repo.kind, repo.base_model, repo.description) == ("acme/bot", "adapter", "acme/llama-tiny", "d")
    with pytest.raises(Conflict):
        hub.create_repo("acme/bot", kind="adapter")
    assert hub.create_repo("acme/bot", kind="adapter", exist_ok=True).id == "acme/bot"


def test_update_and_delete_repo(make_hub, fake_hub, server):
    hub = make_hub()
    hub.create_repo("acme/bot", kind="dataset")
    repo = hub.update_repo("acme/bot", description="new")
    assert repo.description == "new" and repo.visibility == "private"
    [patch] = server.requests("PATCH")
    assert json.loads(patch.body) == {"description": "new"}
    assert hub.delete_repo("acme/bot") is None
    assert "acme/bot" not in fake_hub.repos


def test_versions_version_and_aliases(make_hub, fake_hub, server):
    fake_hub.add_version("acme/bot", {"a.json": b"1"})
    fake_hub.add_version("acme/bot", {"a.json": b"2"})
    hub = make_hub()

    listed = list(hub.versions("acme/bot"))
    assert [v.number for v in listed] == [2, 1] and all(v.files is None for v in listed)

    assert hub.set_alias("acme/bot@1", "prod")["version"] == 1
    assert json.loads(server.requests("PUT")[0].body) == {"version": 1}  # a number stays a number
    v = hub.version("acme/bot@prod")
    assert isinstance(v, Version) and v.number == 1 and v.ref == "acme/bot@1" and "prod" in v.aliases
    assert [(f.path, f.size) for f in v.files] == [("a.json", 1)]

    pinned = hub.version(f"acme/bot@{v.digest}")
    assert pinned.number == 1
    assert server.requests("GET")[-1].path == f"/api/v1/repos/acme/bot/versions/{v.digest}"

    assert hub.aliases("acme/bot") == [{"name": "prod", "version": 1, "updated_at": None, "updated_by": "alice"}]
    hub.delete_alias("acme/bot", "prod")
    assert hub.aliases("acme/bot") == []


def test_account_teams_and_tokens_hit_the_documented_endpoints(make_hub, server):
    seen = []

    def echo(status, body):
        def handler(s, m):
            seen.append((s.method, s.path, json.loads(s.body) if s.body else None))
            return Reply(status, body)
        return handler

    server.route("*", r"/api/v1/teams", echo(200, [{"name": "acme", "role": "admin", "member_count": 2}]))
    server.route("*", r"/api/v1/teams/(?P<t>[^/]+)", echo(200, {"name": "acme", "role": "admin", "members": []}))
    server.route("*", r"/api/v1/teams/acme/members", echo(201, {"username": "bob", "role": "write"}))
    server.route("*", r"/api/v1/teams/acme/members/bob", echo(200, {"username": "bob", "role": "admin"}))
    server.route("*", r"/api/v1/tokens", echo(201, {"id": 7, "name": "ci", "scope": "read", "token": "phs_x"}))
    server.route("DELETE", r"/api/v1/tokens/7", echo(204, b""))
    server.route("DELETE", r"/api/v1/teams/acme/members/bob", echo(204, b""))
    hub = make_hub()

    assert hub.teams()[0]["name"] == "acme"
    hub.create_team("acme")
    assert hub.team("acme")["members"] == []
    hub.add_member("acme", "bob", role="write")
    hub.set_member_role("acme", "bob", "admin")
    assert hub.remove_member("acme", "bob") is None
    assert hub.create_token("ci", scope="read", expires_in_days=30)["token"] == "phs_x"
    hub.create_token("ci2")
    assert hub.revoke_token(7) is None

    assert seen == [
        ("GET", "/api/v1/teams", None),
        ("POST", "/api/v1/teams", {"name": "acme"}),
        ("GET", "/api/v1/teams/acme", None),
        ("POST", "/api/v1/teams/acme/members", {"username": "bob", "role": "write"}),
        ("PATCH", "/api/v1/teams/acme/members/bob", {"role": "admin"}),
        ("DELETE", "/api/v1/teams/acme/members/bob", None),
        ("POST", "/api/v1/tokens", {"name": "ci", "scope": "read", "expires_in_days": 30}),
        ("POST", "/api/v1/tokens", {"name": "ci2", "scope": "read"}),
        ("DELETE", "/api/v1/tokens/7", None),
    ]


def test_whoami(make_hub):
    assert make_hub().whoami()["username"] == "alice"
