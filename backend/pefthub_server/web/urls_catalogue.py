"""Web routes: home (search), namespaces, repositories."""

from __future__ import annotations

from django.urls import path

from pefthub_server.web import views

urlpatterns = [path("", views.catalogue, name="catalogue")]
