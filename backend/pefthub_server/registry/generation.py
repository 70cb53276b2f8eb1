"""The catalogue generation: a number that changes whenever a repository list may read differently, for anyone.

A list page is a function of the rows of three tables (a repository's own fields; its and its base's namespace
names; which namespaces a user belongs to) and of the caller (who, and whether an operator). The first three are
covered here: database triggers on those tables change :class:`~pefthub_server.registry.models.CatalogueGeneration`
in the writing transaction itself, whatever wrote (a service, a ``queryset.update()``, a ``bulk_create``, the
admin, a cascade from a deleted user, raw SQL). The caller is part of a cached page's key (``api.page_cache``).

Why this is safe across processes: a reader reads the generation *before* the rows of its page. A writer's rows
and its new generation become visible together, at its commit. So a reader that saw the new generation reads the
new rows; one that saw the old generation may read either, and caches them under the old one, which nobody asks
for once the new one is visible. Nothing old is ever cached under a new generation.

The cost: a write to those tables holds the generation's row lock from its statement to its commit, so such
writes commit one at a time (a push's commit holds it for its last few statements). Two transactions that write
those tables and lock the same rows in opposite orders (an operator deleting a user while their repository is
pushed to) may meet in a deadlock; PostgreSQL then aborts one of them, which a retry mends.

On PostgreSQL the triggers run once per statement; SQLite has only row triggers. They are (re)installed after
every ``migrate`` (``apps.RegistryConfig``): SQLite rebuilds a table to alter it, dropping its triggers.
"""

from __future__ import annotations

from django.db import connections

from pefthub_server.registry.models import CatalogueGeneration, Membership, Namespace, Repository

#: the tables whose rows a list page shows, or that decide who reads what
WATCHED = (Repository, Namespace, Membership)
TRIGGER = "pefthub_catalogue_changed"
TABLE = CatalogueGeneration._meta.db_table

# A row made afresh (a new database; a flushed one in tests) starts from the clock in microseconds, so a process
# that cached pages under the old row's numbers never meets them again.
_START = {
    "postgresql": "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
}


def catalogue_generation(using: str = "default") -> int | None:
    """The current generation; None where the row is missing (the caller then caches nothing)."""
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT value FROM {TABLE} WHERE id = 1")
        row = cursor.fetchone()
    return row[0] if row else None


def _postgresql() -> list[str]:
    bump = (f"UPDATE {TABLE} SET value = value + 1 WHERE id = 1; IF NOT FOUND THEN INSERT INTO {TABLE} (id, value) "
            f"VALUES (1, {_START['postgresql']}) ON CONFLICT (id) DO UPDATE SET value = {TABLE}.value + 1; END IF;")
    statements = [f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                  f"BEGIN {bump} RETURN NULL; END $$"]
    for model in WATCHED:
        table = model._meta.db_table
        statements += [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}",
                       f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                       f"FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()"]
    return statements


def _sqlite() -> list[str]:
    bump = (f"INSERT INTO {TABLE} (id, value) VALUES (1, {_START['sqlite']}) "
            "ON CONFLICT (id) DO UPDATE SET value = value + 1;")
    statements = []
    for model in WATCHED:
        table = model._meta.db_table
        for event in ("INSERT", "UPDATE", "DELETE"):
            name = f"{TRIGGER}_{table}_{event.lower()}"
            statements += [f"DROP TRIGGER IF EXISTS {name}",
                           f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW BEGIN {bump} END"]
    return statements


def remove_triggers(apps, schema_editor) -> None:
    """Drop the triggers (a migration back past the generation's table: they would write to a missing table)."""
    connection = schema_editor.connection
    if connection.vendor == "postgresql":
        statements = [f"DROP TRIGGER IF EXISTS {TRIGGER} ON {model._meta.db_table}" for model in WATCHED]
        statements.append(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
    elif connection.vendor == "sqlite":
        statements = [f"DROP TRIGGER IF EXISTS {TRIGGER}_{model._meta.db_table}_{event}"
                      for model in WATCHED for event in ("insert", "update", "delete")]
    else:
        statements = []
    for statement in statements:
        schema_editor.execute(statement)


def install_triggers(using: str = "default") -> None:
    """Create (or replace) the triggers, and the generation's row if missing. Idempotent.

    Another database gets neither: without the row, lists are not cached.
    """
    connection = connections[using]
    if connection.vendor not in _START:
        return
    statements = {"postgresql": _postgresql, "sqlite": _sqlite}[connection.vendor]()
    statements.append(f"INSERT INTO {TABLE} (id, value) VALUES (1, {_START[connection.vendor]}) "
                      "ON CONFLICT (id) DO NOTHING")
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
