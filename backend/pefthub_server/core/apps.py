from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "pefthub_server.core"
    label = "core"
    verbose_name = "Accounts and tokens"
