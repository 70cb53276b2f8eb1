from __future__ import annotations

from django.urls import path, re_path

from pefthub_server.registry.api import people, views

app_name = "api"

# Any segment: the views check names and revisions with the shared grammar (pefthub.protocol.refs),
# so a bad one is a 400 that says why, as in the SDK and under /hf.
REPO = r"^repos/(?P<ns>[^/]+)/(?P<name>[^/]+)"

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="root"),
    path("whoami", views.WhoAmIView.as_view(), name="whoami"),
    path("repos", views.RepoListView.as_view(), name="repos"),
    re_path(rf"{REPO}$", views.RepoDetailView.as_view(), name="repo"),
    re_path(rf"{REPO}/uploads$", views.UploadView.as_view(), name="uploads"),
    re_path(rf"{REPO}/versions$", views.VersionListView.as_view(), name="versions"),
    re_path(rf"{REPO}/versions/(?P<rev>[^/]+)$", views.VersionDetailView.as_view(), name="version"),
    re_path(rf"{REPO}/aliases$", views.AliasListView.as_view(), name="aliases"),
    re_path(rf"{REPO}/aliases/(?P<alias>[^/]+)$", views.AliasDetailView.as_view(), name="alias"),
    path("blobs/<str:sha256>", views.BlobView.as_view(), name="blob"),
    path("teams", people.TeamListView.as_view(), name="teams"),
    path("teams/<str:team>", people.TeamDetailView.as_view(), name="team"),
    path("teams/<str:team>/members", people.TeamMembersView.as_view(), name="team-members"),
    path("teams/<str:team>/members/<str:username>", people.TeamMemberDetailView.as_view(), name="team-member"),
    path("tokens", people.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:token_id>", people.TokenDetailView.as_view(), name="token"),
]
