"""The repository list's page cache (``registry.api.page_cache``) under the catalogue generation (``registry.generation``).

After every kind of write, every caller's next page is the one the uncached path renders; a page cached for one caller
is never another's; a cached page is byte for byte the page rendered afresh; a hit costs one query (the generation).
Two server processes: tests/e2e/test_list_cache_serve.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.db import connection
from rest_framework.renderers import JSONRenderer

from pefthub_server.core.models import ApiToken
from pefthub_server.registry.api.serializers import RepoSerializer
from pefthub_server.registry.generation import TABLE, catalogue_generation, install_triggers
from pefthub_server.registry.models import Alias, Membership, Namespace, Repository
from tests.conftest import _person, api_push

URL = "/api/v1/repos"


def _get(client, **params):
    response = client.get(URL, {"page_size": 100, **params})
    assert response.status_code == 200, response.content
    return response


def _fresh(client, **params) -> bytes:
    """The page the uncached path renders now (the cache emptied first and after)."""
    caches["lists"].clear()
    body = _get(client, **params).content
    caches["lists"].clear()
    return body


def _push_data(client, repo: str, tmp_path, text: str, **commit):
    folder = tmp_path / hashlib.sha256(text.encode()).hexdigest()[:8]
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"text": text}) + "\n")
    response = api_push(client, repo, folder, **commit)
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def world(alice, bob, carol, api, tmp_path):
    """acme (alice admin, bob write): a private `secret`, a public dataset `data` at version 1; carol's public
    `carol/pub`; and a client for each caller, anonymous included."""
    client = api(alice.token)
    assert client.post(URL, {"namespace": "acme", "name": "secret", "kind": "model"}, format="json").status_code == 201
    assert client.post(URL, {"namespace": "acme", "name": "data", "kind": "dataset", "visibility": "public"},
                       format="json").status_code == 201
    _push_data(client, "acme/data", tmp_path, "one")
    assert api(carol.token).post(URL, {"name": "pub", "kind": "model", "visibility": "public"},
                                 format="json").status_code == 201
    clients = {"alice": client, "bob": api(bob.token), "carol": api(carol.token), "anonymous": api()}
    for each in clients.values():
        each.get("/api/v1/")  # tokens looked up and their use stamped: later requests count only the list's queries
    return clients


def _pages(clients) -> dict[str, bytes]:
    return {who: _get(client).content for who, client in clients.items()}


def _names(page: bytes) -> list[str]:
    return [row["id"] for row in json.loads(page)["results"]]


# --- every kind of write ----------------------------------------------------------------------------------------


def _create(w, alice, **_):
    assert w["alice"].post(URL, {"namespace": "acme", "name": "new", "kind": "model"}, format="json").status_code == 201


def _commit(w, tmp_path, **_):
    _push_data(w["alice"], "acme/data", tmp_path, "two")


def _delete(w, api, alice, **_):
    assert api(alice.new_token("admin")).delete(f"{URL}/acme/data").status_code == 204


def _visibility(w, **_):
    assert w["alice"].patch(f"{URL}/acme/secret", {"visibility": "public"}, format="json").status_code == 200


def _description(w, **_):
    assert w["alice"].patch(f"{URL}/acme/data", {"description": "now described"}, format="json").status_code == 200


def _member_add(w, **_):
    assert w["alice"].post("/api/v1/teams/acme/members", {"username": "carol", "role": "read"},
                           format="json").status_code == 201


def _member_remove(w, **_):
    assert w["alice"].delete("/api/v1/teams/acme/members/bob").status_code == 204


def _role_change(w, **_):
    assert w["alice"].patch("/api/v1/teams/acme/members/bob", {"role": "read"}, format="json").status_code == 200


def _user_deleted(w, carol, **_):
    carol.user.delete()  # as the admin or a shell does: her namespace, repositories and memberships cascade
    del w["carol"]


def _queryset_update(w, **_):
    Repository.objects.filter(name="secret").update(visibility="internal")  # no signal, no save()


def _bulk_create(w, **_):
    acme = Namespace.objects.get(name="acme")
    Repository.objects.bulk_create([Repository(namespace=acme, name=f"bulk-{i}", kind="model", visibility="public")
                                    for i in range(3)])


def _namespace_renamed(w, **_):
    with connection.cursor() as cursor:  # raw SQL: the triggers see it too
        cursor.execute(f"UPDATE {Namespace._meta.db_table} SET name = 'acme-co' WHERE name = 'acme'")


WRITES = {  # write -> whether some caller's page changes
    "create": (_create, True), "commit": (_commit, True), "delete": (_delete, True), "visibility": (_visibility, True),
    "description": (_description, True), "member_add": (_member_add, True), "member_remove": (_member_remove, True),
    "role_change": (_role_change, False), "user_deleted": (_user_deleted, True),
    "queryset_update": (_queryset_update, True), "bulk_create": (_bulk_create, True),
    "namespace_renamed": (_namespace_renamed, True),
}


@pytest.mark.parametrize("write", WRITES)
def test_after_every_kind_of_write_every_callers_next_page_is_the_fresh_one(world, write, request, api, alice, carol,
                                                                              tmp_path) -> None:
    before = _pages(world)
    assert _pages(world) == before  # cached (test_a_hit_costs_one_query shows these were hits)
    generation = catalogue_generation()
    do, changes = WRITES[write]
    do(world, api=api, alice=alice, carol=carol, tmp_path=tmp_path)
    assert (catalogue_generation() != generation) is True
    after = _pages(world)
    fresh = {who: _fresh(client) for who, client in world.items()}
    assert after == fresh
    assert (after != {who: before[who] for who in after}) is changes


def test_what_each_write_shows(world, api, alice, carol, tmp_path) -> None:
    """The writes above change what they should (so "fresh" above is not vacuous)."""
    names = lambda who: _names(_get(world[who]).content)  # noqa: E731
    assert "acme/secret" in names("bob") and "acme/secret" not in names("carol")
    _member_add(world)
    assert "acme/secret" in names("carol")
    _visibility(world)
    assert "acme/secret" in names("anonymous")
    _commit(world, tmp_path=tmp_path)
    assert {r["id"]: r["latest_version"] for r in json.loads(_get(world["anonymous"]).content)["results"]}["acme/data"] == 2
    _user_deleted(world, carol=carol)
    assert "carol/pub" not in names("alice")


def test_an_alias_move_changes_no_page_and_keeps_the_cache(world, django_assert_num_queries) -> None:
    """Aliases are not in the list: moving one changes no row a page shows, and no cached page is dropped."""
    before = _pages(world)
    generation = catalogue_generation()
    assert world["alice"].put(f"{URL}/acme/data/aliases/prod", {"version": "1"}, format="json").status_code == 200
    assert Alias.objects.filter(name="prod").exists() and catalogue_generation() == generation
    with django_assert_num_queries(1):
        assert _get(world["bob"]).content == before["bob"]
    assert _pages(world) == before == {who: _fresh(client) for who, client in world.items()}


# --- no page crosses callers -------------------------------------------------------------------------------------


def test_a_page_cached_for_one_caller_is_never_anothers(world, carol, api, settings) -> None:
    alice_page = _get(world["alice"]).content  # cached first, with acme's private repository
    assert "acme/secret" in _names(alice_page)
    for who in ("carol", "anonymous"):
        page = _get(world[who]).content
        assert "acme/secret" not in _names(page) and page == _fresh(world[who])
    assert _names(_get(world["anonymous"]).content) == ["acme/data", "carol/pub"]
    # the same user made an operator reads everything, through a token looked up afresh
    get_user_model().objects.filter(pk=carol.user.pk).update(is_staff=True, is_superuser=True)
    operator = api(carol.new_token())
    assert "acme/secret" in _names(_get(operator).content)
    assert _get(operator).content == _fresh(operator)
    # another host: its own next links, not the cached page of the first host
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "hub.example"]
    one = json.loads(_get(world["alice"], page_size=1).content)["next"]
    other = json.loads(world["alice"].get(URL, {"page_size": 1}, HTTP_HOST="hub.example").content)["next"]
    assert one.startswith("http://testserver/") and other.startswith("http://hub.example/")


# --- the bytes, their ETag, the queries ---------------------------------------------------------------------------


def _expected(user, page_size: int, page: int, host: str = "http://testserver") -> dict:
    from pefthub_server.registry import selectors

    repos = list(selectors.repository_list(user=user).select_related("namespace", "base_model__namespace"))
    start = (page - 1) * page_size
    link = lambda n: None if n < 1 or (n - 1) * page_size >= len(repos) else (  # noqa: E731
        f"{host}{URL}?page_size={page_size}" if n == 1 else f"{host}{URL}?page={n}&page_size={page_size}")
    return {"count": len(repos), "next": link(page + 1), "previous": link(page - 1),
            "results": [RepoSerializer(r).data for r in repos[start:start + page_size]]}


def test_a_cached_page_is_byte_for_byte_the_page_rendered_afresh(world, alice, bob, carol) -> None:
    from django.contrib.auth.models import AnonymousUser

    users = {"alice": alice.user, "bob": bob.user, "carol": carol.user, "anonymous": AnonymousUser()}
    for who, client in world.items():
        for size in (1, 2, 3, 100):
            page = 1
            while True:
                miss = _get(client, page_size=size, page=page)
                hit = _get(client, page_size=size, page=page)
                assert hashlib.sha256(hit.content).hexdigest() == hashlib.sha256(miss.content).hexdigest()
                assert {**hit.headers, "X-Request-ID": ""} == {**miss.headers, "X-Request-ID": ""}
                data = json.loads(miss.content)
                assert data == _expected(users[who], size, page)
                assert miss.content == JSONRenderer().render(data)  # what DRF's renderer writes for it
                assert miss["Content-Type"] == "application/json"
                if data["next"] is None:
                    break
                page += 1


def test_a_page_has_an_etag_and_if_none_match_gets_a_304(world) -> None:
    client = world["bob"]
    page = _get(client)
    etag = page["ETag"]
    assert etag == f'"{hashlib.sha256(page.content).hexdigest()[:32]}"'
    for cached in (True, False):
        if not cached:
            caches["lists"].clear()
        again = client.get(URL, {"page_size": 100}, HTTP_IF_NONE_MATCH=etag)
        assert (again.status_code, again.content, again["ETag"]) == (304, b"", etag)
    client.patch(f"{URL}/acme/data", {"description": "changed"}, format="json")
    changed = client.get(URL, {"page_size": 100}, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag and b"changed" in changed.content


def test_a_hit_costs_one_query_and_a_miss_the_page_s_own_three(world, django_assert_num_queries) -> None:
    client = world["alice"]
    with django_assert_num_queries(3):  # the generation, the counts per owner, the page
        miss = _get(client).content
    with django_assert_num_queries(1):  # the generation
        assert _get(client).content == miss
    with django_assert_num_queries(3):  # another query string is another page
        _get(client, kind="model")
    client.patch(f"{URL}/acme/data", {"description": "changed"}, format="json")
    with django_assert_num_queries(3):
        assert _get(client).content != miss


def test_an_error_is_not_cached(world, django_assert_num_queries) -> None:
    client = world["alice"]
    for _ in range(2):
        with django_assert_num_queries(2):  # the generation, the counts: then the page number is past the last
            assert client.get(URL, {"page": 99}).status_code == 404
        assert client.get(URL, {"kind": "nope"}).status_code == 400


# --- the generation -----------------------------------------------------------------------------------------------


def test_the_generation_moves_with_each_watched_table_and_nothing_else(world, alice, bob) -> None:
    def moves(write) -> bool:
        before = catalogue_generation()
        write()
        return catalogue_generation() != before

    acme = Namespace.objects.get(name="acme")
    assert moves(lambda: Repository.objects.filter(name="data").update(description="x"))
    assert moves(lambda: Namespace.objects.create(name="newteam", kind="team"))
    assert moves(lambda: Membership.objects.filter(namespace=acme, user=bob.user).update(role="read"))
    assert moves(lambda: Membership.objects.filter(namespace=acme, user=bob.user).delete())
    assert not moves(lambda: ApiToken.objects.filter(user=alice.user).update(name="renamed"))
    assert not moves(lambda: Alias.objects.all().delete())
    assert not moves(lambda: get_user_model().objects.filter(pk=alice.user.pk).update(first_name="Alice"))


def test_without_its_row_nothing_is_cached_and_the_next_write_makes_it_again(world, django_assert_num_queries) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    assert catalogue_generation() is None
    client = world["alice"]
    for _ in range(2):
        with django_assert_num_queries(3):
            _get(client)
    install_triggers()  # idempotent: the triggers replaced, the row made again
    assert catalogue_generation() is not None
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    client.patch(f"{URL}/acme/data", {"description": "changed"}, format="json")
    assert catalogue_generation() is not None
    _get(client)
    with django_assert_num_queries(1):
        _get(client)


def test_the_triggers_are_installed_after_migrate(db) -> None:
    """Every table the list reads is watched, on this database (SQLite rebuilds tables: they are put back)."""
    _person("dave")  # a write to watched tables
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'pefthub_catalogue_changed'")
        else:
            cursor.execute("SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'trigger' "
                           "AND name LIKE 'pefthub_catalogue_changed%'")
        watched = {row[0] for row in cursor.fetchall()}
    assert watched == {"registry_repository", "registry_namespace", "registry_membership"}


@pytest.mark.django_db(transaction=True)
def test_a_write_in_flight_on_another_connection_shows_in_no_page_until_its_commit_then_in_the_next(alice, api) -> None:
    """The generation moves inside the writing transaction: before its commit a reader sees the old generation and
    the old rows together (and may cache them under it); after it, the new generation and the new rows together."""
    from django.db import connections

    client = api(alice.token)
    assert client.post(URL, {"namespace": "acme", "name": "x", "kind": "model"}, format="json").status_code == 201
    before = _get(client).content
    writer = connections.create_connection("default")  # another connection, as another process would hold
    try:
        writer.set_autocommit(False)
        with writer.cursor() as cursor:
            cursor.execute(f"UPDATE {Repository._meta.db_table} SET description = 'in flight' WHERE name = 'x'")
        caches["lists"].clear()
        assert _get(client).content == before  # rendered afresh while the write is open, and cached
        assert _get(client).content == before
        writer.commit()
        after = _get(client).content
        assert b"in flight" in after and after == _fresh(client)
    finally:
        writer.close()
