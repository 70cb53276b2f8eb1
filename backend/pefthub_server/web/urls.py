from __future__ import annotations

from django.urls import path

from pefthub_server.web import views

app_name = "web"

urlpatterns = [path("", views.catalogue, name="catalogue")]
