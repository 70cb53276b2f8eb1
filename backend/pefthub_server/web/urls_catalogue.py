"""Web routes: home (search), namespaces, repositories and their file downloads."""

from __future__ import annotations

from django.urls import path

from pefthub_server.web import catalogue, repository

urlpatterns = [
    path("", catalogue.home, name="home"),
    path("<str:namespace>", catalogue.namespace, name="namespace"),
    path("<str:namespace>/<str:name>", repository.repository, name="repository"),
    path("<str:namespace>/<str:name>/resolve/<int:number>/<path:path>", repository.download, name="download"),
]
