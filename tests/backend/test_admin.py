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


def test_every_admin_changelist_and_change_page_renders(client, catalogue, alice):
    alice.user.is_staff = alice.user.is_superuser = True
    alice.user.save()
    client.force_login(alice.user)
    from django.apps import apps

    registered = [m for m in admin.site._registry if m._meta.app_label in ("core", "registry")]
    ours = {m for app in ("core", "registry") for m in apps.get_app_config(app).get_models()}
    # shown inline: files on their version, uploads on their blob
    assert ours - set(registered) == {apps.get_model("registry", "VersionFile"), apps.get_model("registry", "BlobUpload")}
    for model in registered:
        info = model._meta.app_label, model._meta.model_name
        listing = client.get(f"/admin/{info[0]}/{info[1]}/", {"q": "a"})
        assert listing.status_code == 200, info
        obj = model.objects.first()
        assert obj is not None, info
        assert client.get(f"/admin/{info[0]}/{info[1]}/{obj.pk}/change/").status_code == 200, info


def test_job_admin_renders(client, alice):
    from pefthub_server.jobs.models import Job, JobEvent
    from pefthub_server.registry.models import Namespace

    job = Job.objects.create(type="train", owner=alice.user, namespace=Namespace.objects.get(name="acme"), output_name="bot",
                             spec={"type": "train"}, inputs={})
    JobEvent.objects.create(job=job, seq=1, type="status", time=job.created_at, data={"status": "queued"})
    alice.user.is_staff = alice.user.is_superuser = True
    alice.user.save()
    client.force_login(alice.user)
    for url in ("/admin/jobs/job/", f"/admin/jobs/job/{job.pk}/change/", "/admin/jobs/jobevent/",
                f"/admin/jobs/jobevent/{job.events.get().pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200, url
    assert b"acme/bot" in client.get("/admin/jobs/job/").content


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
