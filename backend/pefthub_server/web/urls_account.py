"""Web routes: sign-in and sign-out, my tokens, my teams."""

from __future__ import annotations

from django.urls import path

from pefthub_server.web import account

urlpatterns = [
    path("account/sign-in", account.sign_in, name="sign-in"),
    path("account/sign-out", account.sign_out, name="sign-out"),
    path("account/tokens", account.token_list, name="tokens"),
    path("account/tokens/<int:token_id>/revoke", account.token_revoke, name="token-revoke"),
    path("account/teams", account.team_list, name="teams"),
    path("account/teams/<str:team>", account.team_detail, name="team"),
    path("account/teams/<str:team>/members", account.member_add, name="member-add"),
    path("account/teams/<str:team>/members/<str:username>/role", account.member_role, name="member-role"),
    path("account/teams/<str:team>/members/<str:username>/remove", account.member_remove, name="member-remove"),
]
