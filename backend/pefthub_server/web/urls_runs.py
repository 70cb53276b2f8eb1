"""Web routes: jobs and their live pages, versions, compare, lineage."""

from __future__ import annotations

urlpatterns: list = []
