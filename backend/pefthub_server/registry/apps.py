from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_triggers(sender, using, **kwargs) -> None:
    from django.db import connections

    from pefthub_server.registry.generation import TABLE, install_triggers

    if TABLE in connections[using].introspection.table_names():  # not when migrating back past its table
        install_triggers(using)


class RegistryConfig(AppConfig):
    name = "pefthub_server.registry"
    label = "registry"
    verbose_name = "Registry"

    def ready(self) -> None:
        # after every migrate, not in one migration: SQLite drops a table's triggers when a migration rebuilds it
        post_migrate.connect(_install_triggers, sender=self)
