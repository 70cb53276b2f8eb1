"""`GET /api/v1/repos/{ns}/{name}/versions/{rev}`: the manifest, resolved by alias, number, digest or `latest`,
in four queries (the version with its repository, creator and whether it has evaluations, its base, its aliases,
its files; its evaluations only when it has some), for those who may read the repository only; a missing repository
or revision says which, as it always did; lineage names only repositories the caller may read."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from rest_framework import serializers

from pefthub_server.registry.models import Alias, Blob, Namespace, Repository, Version, VersionFile
from pefthub_server.registry.storage import get_blob_store

ADAPTER = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def _token_kept(settings) -> None:
    settings.PEFTHUB_TOKEN_CACHE_SECONDS = 3600  # however slow this machine, the counted request finds its token kept


@pytest.fixture
def adapter(alice, acme_base):
    """`acme/ad` (private): version 1 on the base (aliases `prod` and `canary`, the base's files), version 2; and
    `acme/other`, whose alias `elsewhere` is not `acme/ad`'s."""
    base = Repository.objects.get(name="llama-tiny")
    base_version = Version.objects.get(repository=base)
    acme = Namespace.objects.get(name="acme")
    repo = Repository.objects.create(namespace=acme, name="ad", kind="adapter", base_model=base, peft_type="LORA",
                                     latest_number=2, created_by=alice.user)
    files = list(base_version.files.all())
    v1 = Version.objects.create(repository=repo, number=1, digest="1" * 64, message="first", adapter_config=ADAPTER,
                                base_version=base_version, created_by=alice.user, metadata={"k": "v"},
                                size=sum(f.size for f in files), file_count=len(files))
    VersionFile.objects.bulk_create([VersionFile(version=v1, path=f.path, blob_id=f.blob_id, size=f.size) for f in files])
    Version.objects.create(repository=repo, number=2, digest="2" * 64, base_version=base_version, created_by=None)
    Alias.objects.create(repository=repo, name="prod", version=v1)
    Alias.objects.create(repository=repo, name="canary", version=v1)
    other = Repository.objects.create(namespace=acme, name="other", kind="adapter", base_model=base, latest_number=1)
    Alias.objects.create(repository=other, name="elsewhere",
                         version=Version.objects.create(repository=other, number=1, digest="3" * 64))
    return repo, v1, base_version


@pytest.mark.parametrize("rev", ["prod", "canary", "1", f"sha256:{'1' * 64}"])
def test_a_version_by_alias_number_or_digest_is_its_manifest_in_four_queries(alice, api, adapter, rev,
                                                                             django_assert_num_queries) -> None:
    _, v1, base_version = adapter
    client = api(alice.token)
    client.get("/api/v1/whoami")  # the token is known now (cached) and its last use stamped
    # the version (repository, creator, evaluated), its base, its aliases, its files
    with django_assert_num_queries(4) as queries:
        response = client.get(f"/api/v1/repos/acme/ad/versions/{rev}")
    # one read of the version, joining its repository, namespace, creator and, by alias, the alias; the rights are
    # an EXISTS on the membership (no join); the base (version, repository, namespace) is read by its key
    sql = [q["sql"] for q in queries.captured_queries]
    assert sql[0].count(" JOIN ") == (4 if rev in ("prod", "canary") else 3) and "EXISTS" in sql[0]
    assert sql[1].count(" JOIN ") == 2
    assert response.status_code == 200, response.content
    body = response.json()
    files = body.pop("files")
    assert body == {
        "repo": "acme/ad", "number": 1, "digest": f"sha256:{'1' * 64}", "message": "first",
        "created_at": serializers.DateTimeField().to_representation(v1.created_at), "created_by": "alice",
        "aliases": ["canary", "prod"], "size": v1.size, "file_count": v1.file_count,
        "base_model": {"repo": "acme/llama-tiny", "number": 1, "digest": f"sha256:{base_version.digest}"},
        "adapter": ADAPTER, "metadata": {"k": "v"}, "job": None, "evaluations": [],
        "serving": {"peft_type": "LORA", "rank": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                    "modules_to_save": None, "use_dora": False, "mergeable": True, "multi_lora_servable": True},
    }
    expected = sorted(base_version.files.all(), key=lambda f: f.path)
    assert [(f["path"], f["sha256"], f["size"]) for f in files] == [(f.path, f.blob_id, f.size) for f in expected]
    store = get_blob_store()
    for f in files:  # local backend: URLs signed for GET of that blob
        q = parse_qs(urlsplit(f["url"]).query)
        assert store.check_signature(f["sha256"], "GET", q["expires"][0], q["sig"][0])


def test_latest_is_the_newest_version(alice, api, adapter, django_assert_num_queries) -> None:
    client = api(alice.token)
    client.get("/api/v1/whoami")
    with django_assert_num_queries(4):
        body = client.get("/api/v1/repos/acme/ad/versions/latest").json()
    assert (body["number"], body["aliases"], body["created_by"], body["files"]) == (2, ["latest"], None, [])


@pytest.mark.parametrize(("rev", "message"), [
    ("elsewhere", "`acme/ad` has no alias `elsewhere` (its aliases: `canary`, `prod`)."),
    ("nope", "`acme/ad` has no alias `nope` (its aliases: `canary`, `prod`)."),
    ("3", "`acme/ad` has no version 3 (latest is 2)."),
    (f"sha256:{'3' * 64}", f"`acme/ad` has no version `sha256:{'3' * 64}`."),
])
def test_another_repositorys_alias_or_version_is_not_found_and_says_what_is_there(alice, api, adapter, rev,
                                                                                  message) -> None:
    response = api(alice.token).get(f"/api/v1/repos/acme/ad/versions/{rev}")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["message"] == message


def test_a_missing_repository_or_a_repository_without_versions_says_so(alice, api, adapter) -> None:
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "empty", "kind": "model"},
                       format="json").status_code == 201
    for path, message in [
        ("acme/nothing/versions/prod", "Repository `acme/nothing` not found (or you have no access to it)."),
        ("acme/empty/versions/latest", "`acme/empty` has no versions yet."),
        ("acme/empty/versions/prod", "`acme/empty` has no versions yet."),
    ]:
        response = client.get(f"/api/v1/repos/{path}")
        assert (response.status_code, response.json()["error"]["message"]) == (404, message)


@pytest.mark.parametrize("rev", ["prod", "1", "latest", "nope", "7"])
def test_outsiders_and_anonymous_callers_get_the_404_of_a_missing_repository(carol, api, adapter, rev) -> None:
    for client in (api(carol.token), api()):
        response = client.get(f"/api/v1/repos/acme/ad/versions/{rev}")
        assert response.status_code == 404 and "prod" not in response.content.decode()
        assert response.json()["error"]["message"] == "Repository `acme/ad` not found (or you have no access to it)."


def test_a_public_repositorys_version_reads_without_a_token(alice, api, adapter) -> None:
    repo, _, _ = adapter
    Repository.objects.filter(pk=repo.pk).update(visibility="public")
    body = api().get("/api/v1/repos/acme/ad/versions/prod").json()
    assert (body["repo"], body["number"], body["aliases"]) == ("acme/ad", 1, ["canary", "prod"])
    assert api().get("/api/v1/repos/acme/ad/versions/7").json()["error"]["message"] == (
        "`acme/ad` has no version 7 (latest is 2).")


def test_on_s3_the_manifests_urls_serve_each_files_bytes_under_its_name(s3_storage, alice, api,
                                                                        django_assert_num_queries) -> None:
    store = get_blob_store()
    repo = Repository.objects.create(namespace=Namespace.objects.get(name="acme"), name="s3-model", kind="model",
                                     latest_number=1)
    version = Version.objects.create(repository=repo, number=1, digest="4" * 64)
    for path, data in {"config.json": b"{}", "weights/model.safetensors": b"w" * 5000}.items():
        sha = hashlib.sha256(data).hexdigest()
        store.save_bytes(sha, data)
        Blob.objects.create(sha256=sha, size=len(data))
        VersionFile.objects.create(version=version, path=path, blob_id=sha, size=len(data))
    Alias.objects.create(repository=repo, name="prod", version=version)
    client = api(alice.token)
    client.get("/api/v1/whoami")
    with django_assert_num_queries(3):  # a version without a base, nor evaluations: no read of either
        files = client.get("/api/v1/repos/acme/s3-model/versions/prod").json()["files"]
    assert [f["path"] for f in files] == ["config.json", "weights/model.safetensors"]
    for f in files:
        got = requests.get(f["url"], timeout=10)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == f["sha256"]
        assert f'filename="{f["path"].rsplit("/", 1)[-1]}"' in got.headers["Content-Disposition"]


def test_lineage_names_only_repositories_the_caller_may_read(alice, bob, api, adapter, django_assert_num_queries) -> None:
    """A job's lineage pins its base, dataset, parent and merged adapters; a pin of a repository the caller cannot read
    is answered as hidden (a merge's weight kept), in the version and in the list of versions."""
    _, v1, _ = adapter
    secret = Repository.objects.create(namespace=Namespace.objects.get(name="bob"), name="secret", kind="dataset",
                                       latest_number=1)
    pin = {"repo": "bob/secret", "number": 1, "digest": "9" * 64}
    base = {"repo": "acme/llama-tiny", "number": 1, "digest": "8" * 64}
    v1.metadata = {"k": "v", "lineage": {"job": "j", "base_model": base, "dataset": pin, "parent": dict(pin),
                                         "adapters": [{**pin, "weight": 0.5}, {**base, "weight": 1.0}]}}
    v1.save()
    assert secret.visibility == "private"
    client = api(alice.token)
    client.get("/api/v1/whoami")
    with django_assert_num_queries(5):  # the four, and which of the named repositories alice may read
        seen = client.get("/api/v1/repos/acme/ad/versions/1")
    hidden = {"job": "j", "base_model": base, "dataset": {"hidden": True}, "parent": {"hidden": True},
              "adapters": [{"hidden": True, "weight": 0.5}, {**base, "weight": 1.0}]}
    assert seen.json()["metadata"] == {"k": "v", "lineage": hidden} and b"bob/secret" not in seen.content
    listed = client.get("/api/v1/repos/acme/ad/versions")
    assert [v["metadata"] for v in listed.json()["results"]] == [{}, {"k": "v", "lineage": hidden}]
    assert b"bob/secret" not in listed.content
    # bob reads both repositories: he sees the lineage as the job wrote it
    assert api(bob.token).get("/api/v1/repos/acme/ad/versions/1").json()["metadata"] == v1.metadata
    assert Version.objects.get(pk=v1.pk).metadata == v1.metadata  # answers are copies; what is stored is kept
