"""Worker tests that talk to a hub use the live server of the end-to-end tests (real HTTP, threaded)."""

from __future__ import annotations

from tests.e2e.conftest import hub_for  # noqa: F401 - a fixture, shared rather than written twice
