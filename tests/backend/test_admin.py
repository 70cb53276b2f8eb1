"""The Django admin of every app renders with real data, read-only where objects are immutable."""

from __future__ import annotations

from django.contrib import admin


def test_every_admin_changelist_and_change_page_renders(client, catalogue, alice):
    alice.user.is_staff = alice.user.is_superuser = True
    alice.user.save()
    client.force_login(alice.user)
    from django.apps import apps

    registered = [m for m in admin.site._registry if m._meta.app_label in ("core", "registry")]
    ours = {m for app in ("core", "registry") for m in apps.get_app_config(app).get_models()}
    assert ours - set(registered) == {apps.get_model("registry", "VersionFile")}  # shown inline on its version
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
