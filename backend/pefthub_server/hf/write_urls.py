"""Routes of the Hugging Face-compatible write API (create_repo, preupload, LFS batch, commit, branches, tags)."""

from __future__ import annotations

from django.urls import path, re_path

from pefthub_server.hf import uploads, write

# Any segment: the views check names with the shared grammar (pefthub.protocol.refs).
REPO = r"^api/(?P<repo_type>models|datasets)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
REV = r"(?P<rev>[^/]+)$"
REF = r"(?P<ref>[^/]+)$"
LFS = "<str:ns>/<str:name>.git/info/lfs/objects"

urlpatterns = [
    path("api/repos/create", write.create_repo),
    path("api/repos/delete", write.delete_repo),
    path("api/validate-yaml", write.validate_yaml),
    re_path(rf"{REPO}/preupload/{REV}", uploads.preupload),
    re_path(rf"{REPO}/commit/{REV}", write.commit),
    re_path(rf"{REPO}/branch/{REF}", write.branch),
    re_path(rf"{REPO}/tag/{REF}", write.tag),
    re_path(rf"{REPO}/xet-read-token/{REV}", write.xet_token),
    re_path(rf"{REPO}/xet-write-token/{REV}", write.xet_token),
    path(write.XET_OFF_PATH.removeprefix("/hf/"), write.xet_token),
    path(f"{LFS}/batch", uploads.lfs, {"repo_type": "models", "action": "batch"}),
    path(f"{LFS}/verify", uploads.lfs, {"repo_type": "models", "action": "verify"}),
    path(f"datasets/{LFS}/batch", uploads.lfs, {"repo_type": "datasets", "action": "batch"}),
    path(f"datasets/{LFS}/verify", uploads.lfs, {"repo_type": "datasets", "action": "verify"}),
]
