"""List pages cost one query for the page plus one for the count, however many items they show; their
times read as DRF's DateTimeField writes them."""

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
    with django_assert_num_queries(2):  # count, page (namespace, base and its namespace joined)
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
