from __future__ import annotations

from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "pefthub_server.web"
    label = "web"
    verbose_name = "Web catalogue"
