from __future__ import annotations

from django.urls import include, path, re_path

from pefthub_server.hf import history, listing, views

# Any segment: the views check names with the shared grammar (pefthub.protocol.refs).
NS = r"(?P<ns>[^/]+)"
NAME = r"(?P<name>[^/]+)"
TYPE = r"(?P<repo_type>models|datasets)"
REV = r"(?P<rev>[^/]+)"

urlpatterns = [
    re_path(rf"^api/{TYPE}$", listing.repo_list),
    path("api/whoami-v2", listing.whoami),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}$", views.repo_info),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/revision/{REV}$", views.repo_info),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/tree/{REV}$", views.tree),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/tree/{REV}/(?P<path>.+)$", views.tree),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/paths-info/{REV}$", views.paths_info),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/refs$", history.refs),
    re_path(rf"^api/{TYPE}/{NS}/{NAME}/commits/{REV}$", history.commits),
    re_path(rf"^{NS}/{NAME}/resolve/{REV}/(?P<path>.+)$", views.resolve, {"repo_type": "models"}),
    re_path(rf"^datasets/{NS}/{NAME}/resolve/{REV}/(?P<path>.+)$", views.resolve, {"repo_type": "datasets"}),
    path("", include("pefthub_server.hf.write_urls")),  # the write side: create_repo, preupload, LFS, commit, refs
    path("<path:path>", views.not_found),
]
