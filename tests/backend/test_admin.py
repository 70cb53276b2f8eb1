"""The Django admin of every app renders with real data, read-only where objects are immutable; sign-in locks
out after repeated wrong passwords (django-axes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib import admin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def staff(client, catalogue, alice):
    """alice, staff superuser and admin of acme, signed in to the admin; a train job into acme with two events."""
    from django.utils import timezone

    from pefthub_server.jobs.models import Job, JobEvent, Worker
    from pefthub_server.registry.models import Namespace

    alice.user.is_staff = alice.user.is_superuser = True
    alice.user.save()
    client.force_login(alice.user)
    job = Job.objects.create(type="train", owner=alice.user, namespace=Namespace.objects.get(name="acme"), output_name="bot",
                             spec={"type": "train", "hyperparameters": {"lr": 0.001}}, inputs={}, last_seq=2)
    JobEvent.objects.bulk_create([JobEvent(job=job, seq=1, type="status", time=job.created_at, data={"status": "queued"}),
                                  JobEvent(job=job, seq=2, type="metric", time=job.created_at, data={"step": 1, "loss": 2.5})])
    Worker.objects.create(name="gpu@node-1", last_seen=timezone.now(),
                          capabilities={"queues": ["gpu"], "cuda": True, "gpu_count": 1, "bitsandbytes": True})
    return alice


ADMIN_APPS = ("core", "registry", "jobs")
#: records of what happened: viewed in the admin, never added, edited or deleted there
IMMUTABLE = {("registry", "version"), ("registry", "blob"), ("registry", "aliasmove"), ("registry", "alias"),
             ("jobs", "job"), ("jobs", "jobevent"), ("jobs", "worker"), ("core", "apitoken")}


def registered_models():
    return [m for m in admin.site._registry if m._meta.app_label in ADMIN_APPS]


def test_every_admin_changelist_and_change_page_renders(client, staff):
    from django.apps import apps

    ours = {m for app in ADMIN_APPS for m in apps.get_app_config(app).get_models()}
    # shown inline: files and evaluations on their version, uploads and content checks on their blob, checkpoints
    # on their job; not shown: the catalogue generation, a counter the database's triggers keep
    # (registry.generation), and a checkpoint's files (the API lists them)
    assert ours - set(registered_models()) == {apps.get_model("jobs", "JobCheckpoint"),
                                               apps.get_model("jobs", "CheckpointFile"),
                                               apps.get_model("registry", "VersionFile"),
                                               apps.get_model("registry", "Evaluation"),
                                               apps.get_model("registry", "BlobUpload"),
                                               apps.get_model("registry", "BlobCheck"),
                                               apps.get_model("registry", "CatalogueGeneration")}
    for model in registered_models():
        info = model._meta.app_label, model._meta.model_name
        listing = client.get(f"/admin/{info[0]}/{info[1]}/", {"q": "a"})
        assert listing.status_code == 200, info
        obj = model.objects.first()
        assert obj is not None, info
        assert client.get(f"/admin/{info[0]}/{info[1]}/{obj.pk}/change/").status_code == 200, info
    assert b"acme/bot" in client.get("/admin/jobs/job/").content
    from pefthub_server.jobs.models import Job, JobCheckpoint

    job = Job.objects.first()
    JobCheckpoint.objects.create(job=job, attempt=1, step=7, metrics={"loss": 1.625}, size=123)
    page = client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert "Job checkpoints" in page and "1.625" in page and 'name="checkpoints-0-step"' not in page  # shown, read-only


def test_immutable_records_have_no_add_change_or_delete(client, staff):
    for model in registered_models():
        info = model._meta.app_label, model._meta.model_name
        if info not in IMMUTABLE:
            continue
        obj = model.objects.first()
        base = f"/admin/{info[0]}/{info[1]}/"
        listing = client.get(base).content.decode()
        assert f'href="{base}add/"' not in listing and 'value="delete_selected"' not in listing, info
        assert client.get(f"{base}add/").status_code == 403, info
        page = client.get(f"{base}{obj.pk}/change/").content.decode()
        assert 'name="_save"' not in page and "deletelink" not in page and "<textarea" not in page, info
        assert client.post(f"{base}{obj.pk}/change/", {}).status_code == 403, info
        assert client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 403, info
        assert model.objects.filter(pk=obj.pk).exists(), info
    # inlines: a version's files and a blob's uploads are listed without add or delete
    from pefthub_server.registry.models import Blob, Version

    version = Version.objects.get(repository__name="bot")
    page = client.get(f"/admin/registry/version/{version.pk}/change/").content.decode()
    assert "adapter_config.json" in page and "add-row" not in page and "DELETE" not in page
    blob = Blob.objects.first()
    assert "add-row" not in client.get(f"/admin/registry/blob/{blob.pk}/change/").content.decode()
    # a repository is created by the API; its identity is read-only here, its description editable
    assert client.get("/admin/registry/repository/add/").status_code == 403
    repo_page = client.get(f"/admin/registry/repository/{version.repository_id}/change/").content.decode()
    assert 'name="description"' in repo_page and 'name="name"' not in repo_page and 'name="kind"' not in repo_page


def test_json_fields_are_pretty_printed_read_only(client, staff):
    import json

    from pefthub_server.jobs.models import Job
    from pefthub_server.registry.models import Version

    version = Version.objects.get(repository__name="bot")
    page = client.get(f"/admin/registry/version/{version.pk}/change/").content.decode()
    pretty = json.dumps(version.adapter_config, indent=2, sort_keys=True, ensure_ascii=False)
    from django.utils.html import escape

    assert f">{escape(pretty)}</pre>" in page
    job = Job.objects.get()
    page = client.get(f"/admin/jobs/job/{job.pk}/change/").content.decode()
    assert escape(json.dumps(job.spec, indent=2, sort_keys=True)) in page
    assert 'name="spec"' not in page


def action(client, url: str, name: str, pks, **extra):
    return client.post(url, {"action": name, "_selected_action": [str(pk) for pk in pks], **extra}, follow=True)


def test_move_alias_action_goes_through_the_alias_service(client, staff, api, tiny_adapter, tmp_path):
    import shutil

    from pefthub_server.registry.models import Alias, AliasMove
    from tests.conftest import api_push

    second = shutil.copytree(tiny_adapter[0], tmp_path / "second")
    (second / "README.md").write_text("# bot, second version\n")
    assert api_push(api(staff.token), "acme/bot", second, message="second").status_code == 201
    prod = Alias.objects.get(repository__name="bot", name="prod")
    assert prod.version.number == 1
    moved = action(client, "/admin/registry/alias/", "move", [prod.pk], revision="2")
    assert "Alias acme/bot@prod now names version 2." in moved.content.decode()
    prod.refresh_from_db()
    assert prod.version.number == 2 and prod.updated_by == staff.user
    move = AliasMove.objects.filter(alias="prod").first()
    assert (move.from_number, move.to_number, move.moved_by) == (1, 2, staff.user)

    # the service's own refusals come back as messages; nothing moves
    missing = action(client, "/admin/registry/alias/", "move", [prod.pk], revision="9")
    assert "Alias acme/bot@prod: `acme/bot` has no version 9" in missing.content.decode()
    assert AliasMove.objects.filter(alias="prod").count() == 2
    prod.refresh_from_db()
    assert prod.version.number == 2
    assert "Name the version to move to" in action(client, "/admin/registry/alias/", "move", [prod.pk]).content.decode()

    # deleting is recorded as a move to nothing, as DELETE /api/v1/repos/.../aliases/prod records it
    action(client, "/admin/registry/alias/", "delete_through_service", [prod.pk])
    assert not Alias.objects.filter(pk=prod.pk).exists()
    assert AliasMove.objects.filter(alias="prod").count() == 3


def test_cancel_job_action_goes_through_the_jobs_service(client, staff, carol):
    from pefthub_server.jobs.models import Job

    job = Job.objects.get()
    page = action(client, "/admin/jobs/job/", "cancel", [job.pk]).content.decode()
    assert f"Job {job.id.hex}: cancelled." in page
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.events.order_by("-seq").first().data["reason"] == "cancelled by alice before it started"
    # a finished job: the service's 409 message, nothing changes
    again = action(client, "/admin/jobs/job/", "cancel", [job.pk]).content.decode()
    assert f"Job {job.id.hex}: Job {job.id.hex} already ended (cancelled)." in again


def test_job_page_shows_events_a_page_at_a_time(client, staff):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from pefthub_server.jobs.admin import EVENTS_PER_PAGE
    from pefthub_server.jobs.models import Job, JobEvent

    job = Job.objects.get()
    url = f"/admin/jobs/job/{job.pk}/change/"
    client.get(url)  # the content types' cache, warm
    with CaptureQueriesContext(connection) as small:
        small_page = client.get(url).content.decode()
    assert small_page.count('class="job-event"') == 2 and small_page.count('<circle data-series="loss"') == 1
    JobEvent.objects.bulk_create([JobEvent(job=job, seq=seq, type="metric", time=job.created_at,
                                           data={"step": seq, "loss": 1 / seq}) for seq in range(3, 2001)])
    with CaptureQueriesContext(connection) as big:
        page = client.get(url).content.decode()
    assert page.count('class="job-event"') == EVENTS_PER_PAGE
    assert page.count('<circle data-series="loss"') == 1999  # every metric event's loss, on one page
    assert f'<a href="/jobs/{job.id.hex}">' in page  # the loss chart and live progress are on the web page
    assert "Events (2000)" in page and "page 1 of 40" in page
    assert len(big) == len(small)
    last = client.get(url, {"events": 40}).content.decode()
    assert last.count('class="job-event"') == EVENTS_PER_PAGE and \
        '<tr class="job-event"><td>2000</td>' in last and '<tr class="job-event"><td>1950</td>' not in last


# --- sign-in lockout (django-axes) ------------------------------------------------------------


@pytest.fixture
def operators(db):
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    return (users.create_superuser("root", password="right-password-1"),
            users.create_superuser("ops", password="right-password-2"))


def sign_in(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/admin/login/", {"username": username, "password": password, "next": "/admin/"},
                       REMOTE_ADDR=address)


def lock_root(client) -> None:
    """Five wrong passwords for root from 10.0.0.1: the fifth is answered with the lockout page."""
    for _ in range(4):
        wrong = sign_in(client, "root", "guess")
        assert wrong.status_code == 200 and b"Please enter the correct username and password" in wrong.content
    assert sign_in(client, "root", "guess").status_code == 429


def test_five_wrong_passwords_lock_the_username_from_that_address(client, operators):
    lock_root(client)

    locked = sign_in(client, "root", "right-password-1")  # the right password too, while locked
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed sign-ins for root" in page and "15 minutes" in page
    assert "pefthub-server axes_reset_username root" in page
    assert int(locked["Retry-After"]) == 15 * 60
    # Others still sign in: another user from that address, the same user from elsewhere.
    assert sign_in(client, "ops", "right-password-2").status_code == 302
    client.logout()
    assert sign_in(client, "root", "right-password-1", address="10.0.0.2").status_code == 302


def test_an_operator_unlocks_with_axes_reset_username(client, operators):
    from django.core.management import call_command

    lock_root(client)
    assert sign_in(client, "root", "right-password-1").status_code == 429

    call_command("axes_reset_username", "root")
    assert sign_in(client, "root", "right-password-1").status_code == 302


def test_the_lockout_ends_after_its_cool_off(client, operators, settings):
    from datetime import timedelta

    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    lock_root(client)
    assert sign_in(client, "root", "right-password-1").status_code == 429
    time.sleep(1.1)
    assert sign_in(client, "root", "right-password-1").status_code == 302


def test_lockout_settings_come_from_env():
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AXES_LOCKOUT_PARAMETERS)")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PEFTHUB_ADMIN_LOCKOUT_FAILURES": "3",
           "PEFTHUB_ADMIN_LOCKOUT_MINUTES": "60"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(None, 2) == ["3", "3600.0", "[['username', 'ip_address']]\n"]
