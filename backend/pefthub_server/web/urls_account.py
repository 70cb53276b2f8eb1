"""Web routes: sign-in and sign-out, my tokens, my teams."""

from __future__ import annotations

urlpatterns: list = []
