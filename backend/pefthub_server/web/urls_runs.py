"""Web routes: jobs and their live pages, versions, compare (the lineage graph is drawn on the version page)."""

from __future__ import annotations

from django.urls import path

from pefthub_server.web import runs

urlpatterns = [
    path("jobs", runs.job_list, name="jobs"),
    path("jobs/<str:job_ref>", runs.job_detail, name="job"),
    path("jobs/<str:job_ref>/live", runs.job_live, name="job-live"),
    path("<str:namespace>/<str:name>/versions/<int:number>", runs.version_detail, name="version"),
    path("<str:namespace>/<str:name>/compare", runs.compare, name="compare"),
]
