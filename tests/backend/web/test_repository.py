"""The repository page: its card rendered safely, versions, aliases and their moves, files with working downloads,
"use it" snippets, serving facts, a base's adapters; 404 (the same as a missing one) to whoever may not read it."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pefthub_server.registry.models import Alias, AliasMove, Blob, Namespace, Repository, Version, VersionFile
from tests.conftest import api_push

README = """---
license: mit
tags: [support]
---
# Support bot

Answers tickets. <script>alert("script")</script>

[harmless](https://example.org/) and [evil](javascript:alert('link'))

<img src="x.png" onerror="alert('img')"> <a href="javascript:alert('raw')" onclick="alert('click')">raw</a>

| metric | value |
| --- | --- |
| accuracy | 0.91 |
"""


def visit(person=None) -> Client:
    client = Client()
    if person is not None:
        client.force_login(person.user)
    return client


def card(page: str) -> str:
    return re.search(r'<article class="card".*?</article>', page, re.S).group(0)


@pytest.fixture
def bot(alice, bob, carol, api, acme_base, tiny_adapter, tmp_path):
    """`acme/bot` (private): version 1 with a hostile README, version 2 without; `prod` set to 1 then moved to 2 by bob."""
    folder = tmp_path / "bot"
    shutil.copytree(tiny_adapter[0], folder)
    (folder / "README.md").write_text(README)
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "adapter",
                                         "base_model": "acme/llama-tiny"}, format="json").status_code == 201
    assert api_push(client, "acme/bot", folder, message="first cut", aliases=["prod"]).status_code == 201
    assert api_push(api(bob.token), "acme/bot", tiny_adapter[0], message="no card").status_code == 201
    assert api(bob.token).put("/api/v1/repos/acme/bot/aliases/prod", {"version": 2}, format="json").status_code == 200
    return folder


def test_outsiders_get_the_same_404_as_for_a_missing_repository(bot, carol):
    for client in (visit(carol), Client()):
        for url in ("/acme/bot", "/acme/bot?version=1", "/acme/bot/resolve/1/README.md", "/acme/llama-tiny"):
            hidden, missing = client.get(url), client.get(url.replace("bot", "nope").replace("llama-tiny", "nope"))
            assert hidden.status_code == missing.status_code == 404
            assert hidden.content == missing.content.replace(b"nope", b"bot").replace(b"nope", b"llama-tiny")
    assert Client().get("/acme/bad..name").status_code == 404


def test_card_is_rendered_and_inert(bot, bob):
    page = visit(bob).get("/acme/bot?version=1").content.decode()
    html = card(page)
    assert "<h1>Support bot</h1>" in html and "<table>" in html and "<td>0.91</td>" in html
    assert '<a href="https://example.org/" rel="noopener noreferrer nofollow">harmless</a>' in html
    for bad in ("<script", 'alert("script")', 'href="javascript:', "onerror", "onclick", "alert('img')"):
        assert bad not in html, bad
    assert "[evil](javascript:alert('link'))" in html  # markdown-it leaves a javascript: link as text
    assert "license:" not in html  # the front matter is facts, not text
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page))
    assert facts["license"] == "mit" and facts["base_model"] == "acme/llama-tiny" and facts["library_name"] == "peft"
    assert facts["tags"] == "support, pefthub, peft, lora"
    assert "## PEFT Hub" not in html and "<h2>PEFT Hub</h2>" in html  # the hub's own section, rendered
    # version 2 has the README peft wrote: its card, not version 1's
    latest = visit(bob).get("/acme/bot").content.decode()
    assert "Support bot" not in card(latest) and "<dt>license</dt>" not in latest


def test_versions_aliases_moves_and_snippets(bot, alice):
    page = visit(alice).get("/acme/bot").content.decode()
    rows = re.findall(r'<tr><td class="num"><a href="/acme/bot/versions/(\d+)">\d+</a></td>\s*<td>([^<]*)', page)
    assert [(n, m.strip(" ·")) for n, m in rows] == [("2", "no card"), ("1", "first cut")]
    versions = page.split('id="versions-h"')[1].split("</section>")[0]
    assert re.findall(r"<td>(alice|bob)</td>\s*<td><time", versions) == ["bob", "alice"]
    moves = re.findall(r"<strong>(\w+)</strong>\s*(set|moved) <span class=\"chip\">prod</span> ([^<]+)</li>", page)
    assert moves == [("bob", "moved", "1 → 2"), ("alice", "set", "to 1")]
    # the lineage graph of the version shown: its base, as a link
    lineage = page.split('id="lineage-h"')[1].split("</section>")[0]
    assert '<svg class="lineage"' in lineage and 'href="/acme/llama-tiny/versions/1"' in lineage
    # the snippets pin `prod` (on the version shown); a chosen version pins its number
    snippets = dict(re.findall(r'<code id="snippet-(\w+)">(.*?)</code>', page, re.S))
    assert 'Hub().load(&quot;acme/bot@prod&quot;)' in snippets["sdk"]
    assert snippets["cli"] == "pefthub pull acme/bot@prod"
    assert 'eval &quot;$(pefthub env)&quot;' in snippets["hf"]
    assert 'AutoPeftModelForCausalLM.from_pretrained(&quot;acme/bot&quot;, revision=&quot;prod&quot;)' in snippets["hf"]
    assert 'data-copy="snippet-sdk"' in page and "/static/web/copy.js" in page
    pinned = visit(alice).get("/acme/bot?version=1").content.decode()
    assert "pefthub pull acme/bot@1" in pinned and 'revision=&quot;1&quot;' in pinned
    serving = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page.split('id="serving-h"')[1].split("</section>")[0]))
    targets = Version.objects.get(repository__name="bot", number=2).adapter_config["target_modules"]  # as peft wrote them
    assert sorted(targets) == ["q_proj", "v_proj"]
    assert serving == {"peft type": "LORA", "rank": "8", "lora alpha": "16", "target modules": ", ".join(targets),
                       "modules to save": "—", "use dora": "no", "mergeable": "yes", "multi lora servable": "yes"}
    assert visit(alice).get("/acme/bot?version=9").status_code == 404
    assert visit(alice).get("/acme/bot?version=x").status_code == 404


def test_files_download_with_sizes_and_digests(bot, bob, carol):
    page = visit(bob).get("/acme/bot?version=1").content.decode()
    stored = VersionFile.objects.filter(version__repository__name="bot", version__number=1).order_by("path")
    assert re.findall(r'<a href="/acme/bot/resolve/1/([^"]+)" download>', page) == [f.path for f in stored] == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    for f in stored:
        assert f'title="{f.blob_id}"' in page and f'title="{f.size} bytes"' in page
        response = visit(bob).get(f"/acme/bot/resolve/1/{f.path}")
        assert response.status_code == 200
        data = b"".join(response.streaming_content) if response.streaming else response.content
        assert hashlib.sha256(data).hexdigest() == f.blob_id and len(data) == f.size
        head = visit(bob).head(f"/acme/bot/resolve/1/{f.path}")
        assert head.status_code == 200 and head["Content-Length"] == str(f.size) and not head.content
        if f.path != "adapter_config.json":  # the hub pins base_model_name_or_path to the base in that one
            assert data == (bot / f.path).read_bytes()
        assert visit(carol).get(f"/acme/bot/resolve/1/{f.path}").status_code == 404
        assert Client().get(f"/acme/bot/resolve/1/{f.path}").status_code == 404
    assert visit(bob).get("/acme/bot/resolve/1/missing.txt").status_code == 404
    assert visit(bob).get("/acme/bot/resolve/1/../../etc/passwd").status_code == 404


def test_download_from_s3_redirects_to_a_signed_url(bot, bob, s3_storage):
    from pefthub_server.registry.storage import get_blob_store

    data = (bot / "adapter_model.safetensors").read_bytes()
    get_blob_store().save_bytes(hashlib.sha256(data).hexdigest(), data)  # the store moved to S3 (moto)
    response = visit(bob).get("/acme/bot/resolve/1/adapter_model.safetensors")
    assert response.status_code == 302 and "X-Amz-Signature=" in response["Location"]
    import urllib.request

    with urllib.request.urlopen(response["Location"]) as got:  # moto, over HTTP
        assert got.read() == data


def test_base_model_page_shows_its_fingerprint_and_readable_adapters(bot, alice, carol, api):
    api(alice.token).post("/api/v1/repos", {"namespace": "acme", "name": "public-bot", "kind": "adapter",
                                            "base_model": "acme/llama-tiny", "visibility": "public"}, format="json")
    Repository.objects.filter(name="llama-tiny").update(visibility="internal")
    def adapters(person):
        page = visit(person).get("/acme/llama-tiny").content.decode()
        return page, re.findall(r'<li><a href="/(acme/[\w-]+)">', page.split('id="adapters-h"')[1])
    page, listed = adapters(alice)
    assert listed == ["acme/bot", "acme/public-bot"]
    fingerprint = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", page.split('id="fp-h"')[1].split("</section>")[0]))
    assert fingerprint["model type"] == "llama"
    assert fingerprint["module names"] == "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    assert adapters(carol)[1] == ["acme/public-bot"]  # the private adapter is not listed to her
    dataset_snippet = "load_dataset"
    assert dataset_snippet not in page


def _crowd(repo: Repository, base: Repository, versions: int, adapters: int) -> None:
    """Many versions, aliases and moves on ``repo``; many adapters on ``base``."""
    user = repo.created_by
    start = repo.latest_number + 1
    base_version = Version.objects.get(repository=repo, number=1).base_version  # like every pushed adapter version
    made = Version.objects.bulk_create([Version(repository=repo, number=n, digest=f"{n:064x}", created_by=user,
                                                message=f"v{n}", base_version=base_version)
                                        for n in range(start, start + versions)])
    Alias.objects.bulk_create([Alias(repository=repo, name=f"a{i}", version=v, updated_by=user) for i, v in enumerate(made[:200])])
    AliasMove.objects.bulk_create([AliasMove(repository=repo, alias=f"a{i}", from_number=1, to_number=2, moved_by=user)
                                   for i in range(500)])
    Repository.objects.filter(pk=repo.pk).update(latest_number=start + versions - 1)
    acme = Namespace.objects.get(name="acme")
    Repository.objects.bulk_create([Repository(namespace=acme, name=f"bulk-{i}", kind="adapter", base_model=base,
                                               visibility="public") for i in range(adapters)])
    blob = Blob.objects.first()
    VersionFile.objects.bulk_create([VersionFile(version=made[-1], path=f"shard-{i}.bin", blob=blob, size=blob.size)
                                     for i in range(600)])


def _queries(client: Client, url: str) -> int:
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_query_counts_do_not_grow(bot, alice):
    client = visit(alice)
    urls = ["/acme/bot", "/acme/bot?version=1&versions_page=2", "/acme/llama-tiny"]
    small = [_queries(client, url) for url in urls]
    bot_repo, base = Repository.objects.get(name="bot"), Repository.objects.get(name="llama-tiny")
    _crowd(bot_repo, base, versions=500, adapters=500)
    assert [_queries(client, url) for url in urls] == small


def test_dataset_page_has_dataset_snippets(alice, carol, api, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "hello"}\n')
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "corpus", "kind": "dataset",
                                         "visibility": "internal"}, format="json").status_code == 201
    assert api_push(client, "acme/corpus", folder, message="one line").status_code == 201
    page = visit(carol).get("/acme/corpus").content.decode()  # internal: any signed-in user
    snippets = dict(re.findall(r'<code id="snippet-(\w+)">(.*?)</code>', page, re.S))
    assert 'folder = Hub().pull(&quot;acme/corpus@1&quot;)' in snippets["sdk"]
    assert snippets["cli"] == "pefthub pull acme/corpus@1"
    assert 'load_dataset(&quot;acme/corpus&quot;, revision=&quot;1&quot;)' in snippets["hf"]
    assert 'id="serving-h"' not in page and 'id="fp-h"' not in page and 'id="adapters-h"' not in page
    assert Client().get("/acme/corpus").status_code == 404


def test_a_readme_too_long_to_merge_is_offered_as_a_download(alice, api, tmp_path, monkeypatch):
    monkeypatch.setattr("pefthub_server.web.repository.MAX_README", 100)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "README.md").write_text("# long\n" + "x" * 200)
    client = api(alice.token)
    client.post("/api/v1/repos", {"namespace": "acme", "name": "corpus", "kind": "dataset"}, format="json")
    assert api_push(client, "acme/corpus", folder).status_code == 201
    page = visit(alice).get("/acme/corpus").content.decode()
    assert "too long to show here" in page and 'href="/acme/corpus/resolve/1/README.md"' in page and "xxxx" not in page
