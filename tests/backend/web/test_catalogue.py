"""Home and namespace pages: each visitor sees exactly what the API lets them read, searched, filtered, sorted, paged.

The world: alice administers team `acme`, bob is a `write` member, carol belongs to no team.
`acme/llama-tiny` (a private base, pushed), `acme/bot` (a public adapter on it, pushed), and,
made without versions, `acme/secret` (private adapter), `acme/notes` (internal dataset),
`bob/scratch` (bob's private model).
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pefthub_server.registry.models import Namespace, Repository, Version


def names(page: str) -> list[str]:
    """The repositories a page lists, in order."""
    return re.findall(r'<a class="repo-name" href="/([^"]+)">', page)


def visit(person=None) -> Client:
    client = Client()
    if person is not None:
        client.force_login(person.user)
    return client


@pytest.fixture
def world(catalogue, alice, bob, carol, api):
    client = api(alice.token)
    for body in ({"namespace": "acme", "name": "secret", "kind": "adapter", "base_model": "acme/llama-tiny",
                  "description": "a private support adapter"},
                 {"namespace": "acme", "name": "notes", "kind": "dataset", "visibility": "internal"}):
        assert client.post("/api/v1/repos", body, format="json").status_code == 201, body
    assert api(bob.token).post("/api/v1/repos", {"namespace": "bob", "name": "scratch", "kind": "model"},
                               format="json").status_code == 201
    return {"alice": alice, "bob": bob, "carol": carol, "anonymous": None}


READABLE = {
    "alice": {"acme/bot", "acme/llama-tiny", "acme/secret", "acme/notes"},
    "bob": {"acme/bot", "acme/llama-tiny", "acme/secret", "acme/notes", "bob/scratch"},
    "carol": {"acme/bot", "acme/notes"},
    "anonymous": {"acme/bot"},
}


@pytest.mark.parametrize("who", list(READABLE))
def test_home_lists_exactly_what_the_visitor_may_read(world, who):
    page = visit(world[who]).get("/").content.decode()
    assert set(names(page)) == READABLE[who]
    count = len(READABLE[who])
    assert f"{count} repositor{'y' if count == 1 else 'ies'}" in page  # counts leave out what they cannot read
    assert "No repositories yet" not in page
    # a search for a private one finds nothing and counts nothing for outsiders
    found = visit(world[who]).get("/", {"q": "secret"}).content.decode()
    assert names(found) == (["acme/secret"] if who in ("alice", "bob") else [])
    if who in ("carol", "anonymous"):
        assert "No repositories match" in found and "acme/secret" not in found and "private support" not in found


def test_search_covers_names_descriptions_base_models_and_methods(world, alice):
    client = visit(alice)
    assert names(client.get("/", {"q": "support"}).content.decode()) == ["acme/secret"]  # its description
    assert sorted(names(client.get("/", {"q": "llama-tiny"}).content.decode())) == ["acme/bot", "acme/llama-tiny",
                                                                                      "acme/secret"]  # base model
    assert names(client.get("/", {"q": "lora"}).content.decode()) == ["acme/bot"]  # its method (peft type)
    assert names(client.get("/", {"q": "NOTES"}).content.decode()) == ["acme/notes"]


def test_filters_sort_and_paging_keep_the_query(world, alice, bob, monkeypatch):
    client = visit(bob)
    assert names(client.get("/", {"kind": "model"}).content.decode()) == ["bob/scratch", "acme/llama-tiny"]
    assert names(client.get("/", {"kind": "model", "sort": "name"}).content.decode()) == ["acme/llama-tiny", "bob/scratch"]
    assert names(client.get("/", {"namespace": "bob"}).content.decode()) == ["bob/scratch"]
    assert names(client.get("/", {"visibility": "internal"}).content.decode()) == ["acme/notes"]
    assert names(client.get("/", {"method": "LORA"}).content.decode()) == ["acme/bot"]
    assert sorted(names(client.get("/", {"base_model": "acme/llama-tiny"}).content.decode())) == ["acme/bot", "acme/secret"]
    # a value outside the choices is a 400 that names it and the choices
    bad = client.get("/", {"kind": "modle"})
    assert bad.status_code == 400 and "`kind=modle` is not one of adapter, model, dataset" in bad.content.decode()
    # metric sort: eval_loss of the latest version, lowest first, repos without one last
    Version.objects.filter(repository__name="bot").update(metadata={"metrics": {"eval_loss": 2.5}})
    Version.objects.filter(repository__name="llama-tiny").update(metadata={"metrics": {"eval_loss": 0.5}})
    assert names(client.get("/", {"sort": "metric"}).content.decode())[:2] == ["acme/llama-tiny", "acme/bot"]
    # paging keeps the filters and the sort
    monkeypatch.setattr("pefthub_server.web.catalogue.PAGE_SIZE", 2)
    first = client.get("/", {"namespace": "acme", "sort": "name"}).content.decode()
    assert names(first) == ["acme/bot", "acme/llama-tiny"]
    link = re.search(r'<a rel="next" href="\?([^"]+)"', first).group(1).replace("&amp;", "&")
    assert link == "namespace=acme&sort=name&page=2"
    assert names(client.get("/?" + link).content.decode()) == ["acme/notes", "acme/secret"]


def test_no_repositories_yet_only_when_none_is_readable(db, carol):
    anonymous = Client().get("/").content.decode()
    assert "No repositories yet" in anonymous and "/account/sign-in?next=/" in anonymous
    page = visit(carol).get("/").content.decode()
    assert "No repositories yet" in page and "pefthub push ./my-adapter carol/my-adapter" in page


@pytest.mark.parametrize("who", list(READABLE))
def test_namespace_pages(world, who):
    client = visit(world[who])
    acme = client.get("/acme")
    assert acme.status_code == 200
    assert set(names(acme.content.decode())) == {n for n in READABLE[who] if n.startswith("acme/")}
    members = re.findall(r'<li><a href="/(\w+)">\1</a> <span class="chip">(\w+)</span></li>', acme.content.decode())
    assert members == ([("alice", "admin"), ("bob", "write")] if who in ("alice", "bob") else [])
    bob_page = client.get("/bob")
    assert bob_page.status_code == 200
    assert names(bob_page.content.decode()) == (["bob/scratch"] if who == "bob" else [])
    assert client.get("/nobody").status_code == 404
    assert client.get("/favicon.ico").status_code == 404


def _bulk(base: Repository, count: int) -> None:
    """``count`` public adapters on ``base``, each with one version carrying an eval_loss."""
    acme = Namespace.objects.get(name="acme")
    repos = Repository.objects.bulk_create([
        Repository(namespace=acme, name=f"bulk-{i:04d}", kind="adapter", visibility="public", base_model=base,
                   peft_type="LORA", latest_number=1, description=f"bulk adapter {i}") for i in range(count)])
    Version.objects.bulk_create([Version(repository=r, number=1, digest=f"{i:064x}", metadata={"metrics": {"eval_loss": i / 7}})
                                 for i, r in enumerate(repos)])


def _queries(client: Client, url: str) -> int:
    client.get(url)  # warm: sessions, caches
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


@pytest.mark.parametrize("url", ["/", "/?sort=metric", "/?q=bulk&sort=name&page=2", "/acme"])
def test_query_count_does_not_grow_with_the_catalogue(world, alice, url):
    client = visit(alice)
    small = _queries(client, url.replace("q=bulk", "q=a"))
    _bulk(Repository.objects.get(name="llama-tiny"), 500)
    assert _queries(client, url) == small
