"""Who may see and do what (registry.selectors): outsiders get 404, roles and scopes limit members, visibility opens repos."""

from __future__ import annotations

import pytest

from pefthub_server.registry.models import Version
from tests.conftest import api_push, file_specs


@pytest.fixture
def pushed_adapter(alice, api, acme_base, tiny_adapter):
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter", "base_model": "acme/llama-tiny"}, format="json")
    response = api_push(client, "acme/bot", tiny_adapter[0], aliases=["prod"])
    assert response.status_code == 201, response.content
    return response.json()


def test_outsider_gets_404_for_every_read_and_write(carol, api, pushed_adapter, tiny_adapter):
    client = api(carol.token)
    sha = pushed_adapter["files"][0]["sha256"]
    reads = [
        "/api/v1/repos/acme/bot", "/api/v1/repos/acme/bot/versions", "/api/v1/repos/acme/bot/versions/1",
        "/api/v1/repos/acme/bot/versions/prod", f"/api/v1/repos/acme/bot/versions/{pushed_adapter['digest']}",
        "/api/v1/repos/acme/bot/aliases", "/api/v1/repos/acme/bot/aliases/prod", f"/api/v1/blobs/{sha}",
        "/api/v1/repos/acme/llama-tiny", "/api/v1/teams/acme", "/api/v1/teams/acme/members",
    ]
    for url in reads:
        response = client.get(url)
        assert response.status_code == 404, (url, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    writes = [
        ("post", "/api/v1/repos/acme/bot/uploads", {"files": file_specs(tiny_adapter[0])}),
        ("post", "/api/v1/repos/acme/bot/versions", {"files": file_specs(tiny_adapter[0])}),
        ("put", "/api/v1/repos/acme/bot/aliases/prod", {"version": 1}),
        ("delete", "/api/v1/repos/acme/bot/aliases/prod", None),
        ("patch", "/api/v1/repos/acme/bot", {"visibility": "public"}),
        ("delete", "/api/v1/repos/acme/bot", None),
        ("post", "/api/v1/teams/acme/members", {"username": "carol", "role": "admin"}),
        ("post", "/api/v1/repos", {"namespace": "acme", "name": "x", "kind": "model"}),
    ]
    for method, url, body in writes:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code, response.content)
    assert client.get("/api/v1/repos").json()["count"] == 0
    # download URLs handed to alice still work, but carol cannot mint them; the blob without a signature is 404
    unsigned = pushed_adapter["files"][0]["url"].split("?")[0]
    assert client.get(unsigned).status_code == 404
    assert api().get(unsigned).status_code == 404
    assert api().get("/api/v1/repos/acme/bot").status_code == 404


def test_tampered_signature_is_refused(carol, api, pushed_adapter):
    url = pushed_adapter["files"][0]["url"]
    other_sha = pushed_adapter["files"][1]["sha256"]
    tampered = url.replace(pushed_adapter["files"][0]["sha256"], other_sha)
    assert api(carol.token).get(tampered).status_code == 404
    assert api().get(url).status_code == 200  # the signed URL itself is a bearer credential, like a presigned GET


def test_member_reads_and_pulls(bob, api, pushed_adapter):
    client = api(bob.token)
    assert client.get("/api/v1/repos/acme/bot").status_code == 200
    detail = client.get("/api/v1/repos/acme/bot/versions/prod").json()
    blob = client.get(detail["files"][0]["url"])
    assert blob.status_code == 200
    assert client.get(f"/api/v1/blobs/{detail['files'][0]['sha256']}").status_code == 200  # token path


def test_read_token_cannot_push(bob, api, pushed_adapter, tiny_adapter):
    client = api(bob.new_token("read"))
    response = client.post("/api/v1/repos/acme/bot/uploads", {"files": file_specs(tiny_adapter[0])}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
    assert "scope `read`" in response.json()["error"]["message"]
    response = client.post("/api/v1/repos/acme/bot/versions", {"files": file_specs(tiny_adapter[0])}, format="json")
    assert response.status_code == 403
    assert client.get("/api/v1/repos/acme/bot").status_code == 200


def test_read_role_member_cannot_push(alice, api, pushed_adapter, tiny_adapter):
    from tests.conftest import _person

    dave = _person("dave", team="acme", role="read")
    response = api(dave.token).post("/api/v1/repos/acme/bot/uploads", {"files": file_specs(tiny_adapter[0])}, format="json")
    assert response.status_code == 403
    assert api(dave.token).get("/api/v1/repos/acme/bot").status_code == 200


def test_internal_and_public_visibility(alice, carol, api, pushed_adapter):
    owner = api(alice.token)
    assert owner.patch("/api/v1/repos/acme/bot", {"visibility": "internal"}, format="json").status_code == 200
    assert api(carol.token).get("/api/v1/repos/acme/bot/versions/1").status_code == 200
    assert api().get("/api/v1/repos/acme/bot").status_code == 404
    assert api(carol.token).put("/api/v1/repos/acme/bot/aliases/x", {"version": 1}, format="json").status_code == 403
    assert owner.patch("/api/v1/repos/acme/bot", {"visibility": "public"}, format="json").status_code == 200
    assert api().get("/api/v1/repos/acme/bot/versions/1").status_code == 200


def test_delete_needs_admin_scope_and_role(alice, bob, api, pushed_adapter):
    assert api(bob.token).delete("/api/v1/repos/acme/bot").status_code == 403
    assert api(alice.token).delete("/api/v1/repos/acme/bot").status_code == 403  # write-scope token
    assert api(alice.new_token("admin")).delete("/api/v1/repos/acme/bot").status_code == 204
    assert not Version.objects.filter(repository__name="bot").exists()


def test_readable_through_a_relation_is_readable_repositories_rule(alice, bob, carol, db):
    """The rule as a condition on a version's repository picks exactly the versions of readable repositories, for
    the owner, a member, an outsider, anonymous callers, a staff superuser and staff alone."""
    from django.contrib.auth.models import AnonymousUser

    from pefthub_server.registry.models import Namespace, Repository
    from pefthub_server.registry.selectors import readable_repositories, readable_through
    from pefthub_server.registry.teams import user_ensure

    spaces = [Namespace.objects.get(name="acme"), Namespace.objects.get(name="alice"), Namespace.objects.get(name="carol")]
    for ns in spaces:
        for visibility in ("private", "internal", "public"):
            repo = Repository.objects.create(namespace=ns, name=f"r-{visibility}", kind="model", visibility=visibility)
            Version.objects.create(repository=repo, number=1, digest=f"{ns.pk:02d}{visibility[:2]}".ljust(64, "0"))
    root = user_ensure(username="root")
    root.is_staff = root.is_superuser = True
    root.save()
    staff = user_ensure(username="staff")
    staff.is_staff = True
    staff.save()
    for user in (alice.user, bob.user, carol.user, AnonymousUser(), root, staff):
        expected = set(Version.objects.filter(repository__in=readable_repositories(user)).values_list("pk", flat=True))
        got = set(Version.objects.filter(readable_through(user, "repository")).values_list("pk", flat=True))
        assert got == expected and expected, user
    assert len(set(Version.objects.filter(readable_through(carol.user, "repository")).values_list("pk", flat=True))) == 7
