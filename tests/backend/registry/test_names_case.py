"""Names that differ only in case never coexist: users and teams (`acme` / `ACME`), and
repositories within a namespace (`acme/Bot` / `acme/bot`). Each clash is a 409 naming the
holder; the database refuses them too, and the migration that adds the rule refuses to run
over a database that already breaks it, naming the rows to rename."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction

from pefthub_server.core.errors import Conflict
from pefthub_server.registry.models import Namespace, Repository
from pefthub_server.registry.teams import user_ensure


def test_a_team_named_like_a_team_or_user_in_another_case_is_a_409_naming_it(alice, api):
    client = api(alice.token)
    for name, holder in (("ACME", "a team named `acme`"), ("Alice", "a user named `alice`")):
        response = client.post("/api/v1/teams", {"name": name}, format="json")
        assert response.status_code == 409, response.content
        assert holder in response.json()["error"]["message"]
    assert not Namespace.objects.filter(name__in=["ACME", "Alice"]).exists()


def test_a_user_named_like_a_user_or_team_in_another_case_is_refused(alice):
    with pytest.raises(Conflict, match="a user named `alice`"):
        user_ensure(username="ALICE")
    with pytest.raises(Conflict, match="a team named `acme`"):
        user_ensure(username="Acme")
    with pytest.raises(CommandError, match="a user named `alice`"):
        call_command("adduser", "Alice")
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username__in=["ALICE", "Acme", "Alice"]).exists()


def test_joining_a_team_by_another_case_of_its_name_is_refused(alice):
    with pytest.raises(Conflict, match="a team named `acme`"):
        user_ensure(username="erin", team="ACME")


def test_a_repository_named_like_another_in_another_case_is_a_409_naming_it(alice, api):
    client = api(alice.token)
    assert client.post("/api/v1/repos", {"namespace": "acme", "name": "bot", "kind": "dataset"}, format="json").status_code == 201
    response = client.post("/api/v1/repos", {"namespace": "acme", "name": "Bot", "kind": "dataset"}, format="json")
    assert response.status_code == 409 and "`acme/bot` already exists" in response.json()["error"]["message"]
    files = [{"path": "train.jsonl", "sha256": "0" * 64, "size": 2}]
    response = client.post("/api/v1/repos/acme/BOT/uploads", {"files": files, "kind": "dataset"}, format="json")
    assert response.status_code == 409 and "`acme/bot`" in response.json()["error"]["message"]
    assert list(Repository.objects.values_list("name", flat=True)) == ["bot"]
    # Other namespaces may use the name in any case.
    assert client.post("/api/v1/repos", {"name": "BOT", "kind": "dataset"}, format="json").status_code == 201


def test_the_database_refuses_case_duplicates_whoever_writes(alice):
    with pytest.raises(IntegrityError), transaction.atomic():
        Namespace.objects.create(name="AcMe", kind=Namespace.Kind.TEAM)
    acme = Namespace.objects.get(name="acme")
    Repository.objects.create(namespace=acme, name="data", kind="dataset")
    with pytest.raises(IntegrityError), transaction.atomic():
        Repository.objects.create(namespace=acme, name="DATA", kind="dataset")


@pytest.mark.django_db(transaction=True)
def test_the_migration_names_the_rows_an_operator_must_rename():
    call_command("migrate", "registry", "0002", verbosity=0)
    try:
        # Rows an older hub allowed: written straight to the tables, as they were then.
        with connection.cursor() as cursor:
            for name in ("dup", "DUP", "team"):
                cursor.execute("INSERT INTO registry_namespace (name, kind, created_at) VALUES (%s, 'team', CURRENT_TIMESTAMP)",
                               [name])
        team = Namespace.objects.get(name="team")
        for name in ("Bot", "bot"):
            Repository.objects.bulk_create([Repository(namespace=team, name=name, kind="dataset")])
        with pytest.raises(RuntimeError) as refused:
            call_command("migrate", "registry", verbosity=0)
        message = str(refused.value)
        assert "namespaces `DUP`, `dup`" in message and "repositories `team/Bot`, `team/bot`" in message
        assert "pefthub-server migrate" in message
        Namespace.objects.filter(name="DUP").update(name="dup-2")
        Repository.objects.filter(name="Bot").update(name="bot-2")
        call_command("migrate", "registry", verbosity=0)  # renamed: it applies
        assert sorted(Namespace.objects.values_list("name", flat=True)) == ["dup", "dup-2", "team"]
    finally:  # whatever happened, later tests get the schema they expect
        Repository.objects.filter(namespace__name="team").delete()
        Namespace.objects.filter(name__in=["dup", "DUP", "dup-2", "team"]).delete()
        # every app: going back to registry 0002 also unapplied the migrations of other apps that depend on later
        # registry ones (jobs' eval and checkpoint tables), which `migrate registry` alone does not re-apply
        call_command("migrate", verbosity=0)
