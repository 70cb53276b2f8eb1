"""Routes of the Hugging Face-compatible write API (create_repo, preupload, LFS batch, commit, branches, tags)."""

from __future__ import annotations

from django.urls import path, re_path

from pefthub_server.hf import write

# Any segment: the views check names with the shared grammar (pefthub.protocol.refs).
NS = r"(?P<ns>[^/]+)"
NAME = r"(?P<name>[^/]+?)"
TYPE = r"(?P<repo_type>models|datasets)"
REPO = rf"^api/{TYPE}/{NS}/{NAME}"
LFS = r"\.git/info/lfs/objects/(?P<action>batch|verify)$"

urlpatterns = [
    path("api/repos/create", write.create_repo),
    path("api/repos/delete", write.delete_repo),
    path("api/validate-yaml", write.validate_yaml),
    re_path(rf"{REPO}/preupload/(?P<rev>[^/]+)$", write.preupload),
    re_path(rf"{REPO}/commit/(?P<rev>[^/]+)$", write.commit),
    re_path(rf"{REPO}/branch/(?P<ref>[^/]+)$", write.branch),
    re_path(rf"{REPO}/tag/(?P<ref>[^/]+)$", write.tag),
    re_path(rf"{REPO}/xet-(?:read|write)-token(?:/.*)?$", write.xet_token),
    path(write.XET_OFF_PATH.removeprefix("/hf/"), write.xet_token),
    re_path(rf"^{NS}/{NAME}{LFS}", write.lfs, {"repo_type": "models"}),
    re_path(rf"^datasets/{NS}/{NAME}{LFS}", write.lfs, {"repo_type": "datasets"}),
]
