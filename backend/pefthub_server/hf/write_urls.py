"""Routes of the Hugging Face-compatible write API (create_repo, preupload, LFS batch, commit, branches, tags)."""

from __future__ import annotations

urlpatterns: list = []
