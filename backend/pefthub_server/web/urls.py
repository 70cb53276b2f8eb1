"""The web hub for people: server-rendered pages at the URLs people guess.

Order matters: the account and run pages (`/account/...`, `/jobs/...`, `/{ns}/{name}/versions/...`)
come before the catalogue's `/{namespace}` and `/{namespace}/{name}`.
"""

from __future__ import annotations

from django.urls import include, path

app_name = "web"

urlpatterns = [
    path("", include("pefthub_server.web.urls_account")),  # sign-in/out, my tokens, my teams
    path("", include("pefthub_server.web.urls_runs")),  # jobs, versions, compare, lineage
    path("", include("pefthub_server.web.urls_catalogue")),  # home, namespaces, repositories (last: /{ns}/{name})
]
