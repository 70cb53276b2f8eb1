"""List pages cost one query for the page plus one for the count, however many items they show; their
times read as DRF's DateTimeField writes them. The list of repositories counts per owner and reads a page through
the (namespace, name) index (``GroupedRows``): the same rows in the same order as sorting them all, for every caller.
It reads the catalogue generation first (``registry.api.page_cache``: one more query; a page cached is test_list_cache's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from rest_framework import serializers

from pefthub_server.registry.api.serializers import iso_utc
from pefthub_server.registry.models import Alias, Namespace, Repository, Version


@pytest.mark.parametrize("value", [
    datetime(2026, 12, 5, 10, 11, 36, 123456, tzinfo=UTC), datetime(2026, 12, 5, 10, 11, 36, tzinfo=UTC),
    datetime(2026, 12, 5, 23, 30, tzinfo=timezone(timedelta(hours=-5))),  # converted: 04:30 the next day
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))), None,
])
def test_iso_utc_writes_what_drf_writes(settings, value) -> None:
    assert settings.TIME_ZONE == "UTC" and settings.USE_TZ
    assert iso_utc(value) == serializers.DateTimeField().to_representation(value)


@pytest.fixture
def repos(alice, acme_base, api):
    """``repos(n)``: n adapters on acme's base (one with a version, so the page shows a bumped time), then a read."""
    base = Repository.objects.get(name="llama-tiny")
    acme = Namespace.objects.get(name="acme")

    def make(n: int):
        Repository.objects.bulk_create([Repository(namespace=acme, name=f"a-{n}-{i:03d}", kind="adapter", base_model=base,
                                                   peft_type="LORA") for i in range(n)])
        return api(alice.token)

    return make


@pytest.fixture(autouse=True)
def _token_kept(settings) -> None:
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 3600  # however slow this machine, the counted request finds its token kept


def _warm(client) -> None:
    client.get("/api/v1/whoami")  # the token is known now (cached) and its last use stamped


@pytest.mark.parametrize("n", [4, 16])
def test_a_page_of_repositories_is_the_count_and_one_query(repos, n, django_assert_num_queries) -> None:
    client = repos(n)
    _warm(client)
    with django_assert_num_queries(3):  # generation, counts per owner, page (namespace, base and its namespace joined)
        body = client.get("/api/v1/repos", {"kind": "adapter", "page_size": 100}).json()
    assert body["count"] == n and len(body["results"]) == n
    first = body["results"][0]
    repo = Repository.objects.get(name=first["name"])
    assert first == {
        "id": f"acme/{repo.name}", "namespace": "acme", "name": repo.name, "kind": "adapter", "visibility": "private",
        "description": "", "base_model": "acme/llama-tiny", "peft_type": "LORA", "latest_version": None,
        "created_at": serializers.DateTimeField().to_representation(repo.created_at),
        "updated_at": serializers.DateTimeField().to_representation(repo.updated_at),
    }


@pytest.mark.parametrize("n", [4, 16])
def test_a_page_of_versions_is_the_count_and_one_query_and_its_aliases(alice, api, acme_base, n,
                                                                        django_assert_num_queries) -> None:
    repo = Repository.objects.get(name="llama-tiny")
    first = Version.objects.get(repository=repo)
    Version.objects.bulk_create([Version(repository=repo, number=i, digest=f"{i:064x}", created_by=alice.user,
                                         base_version=first) for i in range(2, n + 1)])
    Repository.objects.filter(pk=repo.pk).update(latest_number=n)
    Alias.objects.create(repository=repo, name="prod", version=first)
    client = api(alice.token)
    _warm(client)
    with django_assert_num_queries(4):  # the repository, count, page (relations joined), the page's aliases
        body = client.get("/api/v1/repos/acme/llama-tiny/versions", {"page_size": 100}).json()
    assert body["count"] == n and [v["number"] for v in body["results"]] == list(range(n, 0, -1))
    newest, oldest = body["results"][0], body["results"][-1]
    assert newest["aliases"] == ["latest"] and oldest["aliases"] == ["prod"]
    assert newest["base_model"] == {"repo": "acme/llama-tiny", "number": 1, "digest": f"sha256:{first.digest}"}
    assert newest["created_by"] == "alice" and newest["job"] is None and newest["serving"] is None
    assert oldest["created_at"] == serializers.DateTimeField().to_representation(first.created_at)


# --- the list of repositories, paged by owner (core.pagination.GroupedRows) ------------------------------------

#: owners whose name order is neither their id order nor their `name/` prefix order (`a-b/x` sorts before `a/x` as a
#: string, after it by owner), with rows of every visibility; alice is in acme, carol in none
OWNERS = {"zeta": 7, "a-b": 1, "acme": 5, "a": 3, "m": 0, "B": 4, "a_c": 2}
VISIBILITIES = ("private", "internal", "public")


@pytest.fixture
def catalogue(alice, carol):
    """Repositories of several owners, names of mixed case; the expected list order is the database's own."""
    base = Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name="Base", kind="model",
                                     visibility="public")
    rows = []
    for owner, n in OWNERS.items():
        ns = Namespace.objects.get_or_create(name=owner, defaults={"kind": "team"})[0]
        rows += [Repository(namespace=ns, name=f"{'Rb' if i % 2 else 'ra'}-{i}", kind="adapter", base_model=base,
                            peft_type="LORA", visibility=VISIBILITIES[i % 3], description=f"{owner} {i}")
                 for i in range(n)]
    Repository.objects.bulk_create(rows)
    return base


def _expected(user, **filters) -> list[str]:
    from pefthub_server.registry import selectors

    return [f"{ns}/{name}" for ns, name in selectors.repository_list(user=user, **filters)
            .values_list("namespace__name", "name")]


@pytest.mark.parametrize("who", ["alice", "carol", "anonymous", "operator"])
def test_every_page_is_the_list_in_owner_then_name_order_of_what_the_caller_reads(catalogue, who, request, api) -> None:
    from django.contrib.auth.models import AnonymousUser

    from pefthub_server.registry.api.serializers import RepoSerializer
    from tests.conftest import _person

    if who == "operator":
        person = _person("op")
        type(person.user).objects.filter(pk=person.user.pk).update(is_staff=True, is_superuser=True)
        person.user.refresh_from_db()
    else:
        person = request.getfixturevalue(who) if who != "anonymous" else None
    user = person.user if person else AnonymousUser()
    client = api(person.token if person else None)
    expected = _expected(user)
    shared = {owner: n - (n + 2) // 3 for owner, n in OWNERS.items()}  # internal and public: i % 3 != 0
    readable = {"alice": 1 + OWNERS["acme"] + sum(n for owner, n in shared.items() if owner != "acme"),
                "carol": 1 + sum(shared.values()),
                "anonymous": 1 + sum(n // 3 for n in OWNERS.values()),  # public: i % 3 == 2
                "operator": 1 + sum(OWNERS.values())}[who]
    assert len(expected) == len(set(expected)) == readable
    for size in (1, 2, 3, 4, 5, 7, 200):
        got, page = [], 1
        while True:
            body = client.get("/api/v1/repos", {"page_size": size, "page": page}).json()
            assert body["count"] == len(expected)
            got += [r["id"] for r in body["results"]]
            if body["next"] is None:
                break
            page += 1
        assert got == expected, size
    assert client.get("/api/v1/repos", {"page_size": 3, "page": page + 99}).status_code == 404
    # each row as the repository's own page shows it
    full = client.get("/api/v1/repos", {"page_size": 200}).json()["results"]
    shown = {f"{r.namespace.name}/{r.name}": RepoSerializer(r).data
             for r in Repository.objects.select_related("namespace", "base_model__namespace")}
    assert full == [shown[name] for name in expected]


def test_a_filtered_list_pages_the_same_way(catalogue, alice, api) -> None:
    client = api(alice.token)
    for filters in ({"kind": "adapter"}, {"kind": "model"}, {"namespace": "zeta"}, {"search": "rb"},
                    {"base_model": "acme/Base", "peft_type": "lora"}):
        expected = _expected(alice.user, **filters)
        got = [r["id"] for page in (1, 2, 3, 4, 5, 6) for r in
               (client.get("/api/v1/repos", {**filters, "page_size": 3, "page": page}).json().get("results") or [])]
        assert got == expected, filters


def test_any_slice_of_grouped_rows_is_that_slice_of_the_ordered_queryset(catalogue, alice) -> None:
    from pefthub_server.core.pagination import GroupedRows
    from pefthub_server.registry import selectors

    qs = selectors.repository_list(user=alice.user)
    ordered = list(qs.values_list("namespace__name", "name", "visibility"))
    rows = GroupedRows(qs, columns=("namespace__name", "name", "visibility"))
    assert rows.count() == len(rows) == len(ordered)
    for start in range(len(ordered) + 1):
        for stop in range(start, len(ordered) + 2):
            assert rows[start:stop] == ordered[start:stop], (start, stop)


def test_grouped_rows_need_an_owner_then_name_order(alice) -> None:
    from pefthub_server.core.pagination import GroupedRows

    for ordering in (["name"], ["namespace__name"], ["name", "namespace__name"], ["base_model__namespace__name", "name"],
                     ["namespace__name", "name", "id"], ["-namespace__name", "name"], ["namespace__name", "-name"],
                     ["namespace__name", "base_model__name"]):
        with pytest.raises(ValueError, match="ordered by its group's key"):
            GroupedRows(Repository.objects.order_by(*ordering), columns=("name",))


@pytest.mark.parametrize(("page_size", "page", "queries"), [
    (2, 1, 3),  # within qa: the generation, the counts, then qa's rows read from the (namespace, name) index
    (4, 1, 3),  # qa whole
    (5, 1, 3),  # qa and qb whole: one query in the full order
    (3, 2, 5),  # the end of qa, qb whole, the start of qc: one query per owner cut, one for the whole ones
    (4, 2, 4),  # qb and qc whole, the start of qd
    (6, 2, 4),  # the end of qc, the start of qd
    (3, 4, 3),  # within qd
    (6, 3, 3),  # the last row
])
def test_a_page_costs_the_counts_and_one_query_per_owner_it_cuts(db, api, page_size, page, queries,
                                                                  django_assert_num_queries) -> None:
    """Owners whose names sort the same in every collation, holding 4, 1, 2 and 6 public repositories."""
    for owner, n in {"qd": 6, "qa": 4, "qc": 2, "qb": 1}.items():
        ns = Namespace.objects.create(name=owner, kind="team")
        Repository.objects.bulk_create([Repository(namespace=ns, name=f"r{i}", kind="model", visibility="public")
                                        for i in range(n)])
    with django_assert_num_queries(queries):
        body = api().get("/api/v1/repos", {"page_size": page_size, "page": page}).json()
    start = (page - 1) * page_size
    everything = [f"{o}/r{i}" for o, n in (("qa", 4), ("qb", 1), ("qc", 2), ("qd", 6)) for i in range(n)]
    assert [r["id"] for r in body["results"]] == everything[start:start + page_size]
