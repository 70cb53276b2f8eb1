"""People endpoints: teams, their members, and API tokens."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from pefthub_server.core import tokens
from pefthub_server.core.auth import require_scope
from pefthub_server.core.errors import NotFound
from pefthub_server.core.http import validated
from pefthub_server.core.models import ApiToken
from pefthub_server.core.schema import errors
from pefthub_server.registry import teams
from pefthub_server.registry.api import serializers as s
from pefthub_server.registry.models import Membership, Namespace

# --- teams ---------------------------------------------------------------------------


class TeamListView(APIView):
    @extend_schema(summary="Teams the caller belongs to", responses=s.TeamSerializer(many=True), operation_id="v1_teams_list")
    def get(self, request):
        require_scope(request, "read", "list your teams")
        memberships = Membership.objects.filter(user=request.user, namespace__kind=Namespace.Kind.TEAM).select_related("namespace")
        counts = {}
        for ns_id in Membership.objects.filter(namespace__in=[m.namespace_id for m in memberships]).values_list("namespace_id", flat=True):
            counts[ns_id] = counts.get(ns_id, 0) + 1
        return Response(
            [{"name": m.namespace.name, "role": m.role, "member_count": counts.get(m.namespace_id, 0)} for m in memberships]
        )

    @extend_schema(summary="Create a team (you become its admin)", request=s.TeamCreateSerializer,
                   responses={201: s.TeamDetailSerializer, **errors(409)})
    def post(self, request):
        require_scope(request, "write", "create teams")
        data = validated(s.TeamCreateSerializer, request.data)
        team = teams.team_create(user=request.user, name=data["name"])
        return Response({"name": team.name, "role": "admin", "members": [{"username": request.user.username, "role": "admin"}]}, status=201)


def _team_for_member(request, team: str) -> tuple[Namespace, str]:
    require_scope(request, "read", "see teams")
    membership = (
        Membership.objects.filter(namespace__name=team, namespace__kind=Namespace.Kind.TEAM, user=request.user)
        .select_related("namespace").first()
    )
    if membership is None:
        raise NotFound(f"Team `{team}` not found (or you are not a member).")
    return membership.namespace, membership.role


def _members(ns: Namespace) -> list[dict]:
    return s.MemberSerializer(ns.memberships.select_related("user").order_by("user__username"), many=True).data


class TeamDetailView(APIView):
    @extend_schema(summary="A team and its members", responses=s.TeamDetailSerializer)
    def get(self, request, team):
        ns, role = _team_for_member(request, team)
        return Response({"name": ns.name, "role": role, "members": _members(ns)})


class TeamMembersView(APIView):
    @extend_schema(summary="Members of a team", responses=s.MemberSerializer(many=True))
    def get(self, request, team):
        ns, _ = _team_for_member(request, team)
        return Response(_members(ns))

    @extend_schema(summary="Add a member (team admin)", request=s.MemberAddSerializer,
                   responses={201: s.MemberSerializer, **errors(409)})
    def post(self, request, team):
        require_scope(request, "write", "manage team members")
        data = validated(s.MemberAddSerializer, request.data)
        membership = teams.member_add(user=request.user, team=team, **data)
        return Response(s.MemberSerializer(membership).data, status=201)


class TeamMemberDetailView(APIView):
    @extend_schema(summary="Change a member's role (team admin)", request=s.MemberRoleSerializer, responses=s.MemberSerializer)
    def patch(self, request, team, username):
        require_scope(request, "write", "manage team members")
        data = validated(s.MemberRoleSerializer, request.data)
        membership = teams.member_set_role(user=request.user, team=team, username=username, role=data["role"])
        return Response(s.MemberSerializer(membership).data)

    @extend_schema(summary="Remove a member (team admin)", responses={204: None})
    def delete(self, request, team, username):
        require_scope(request, "write", "manage team members")
        teams.member_remove(user=request.user, team=team, username=username)
        return Response(status=204)


# --- tokens --------------------------------------------------------------------------


class TokenListView(APIView):
    @extend_schema(summary="Your tokens", responses=s.TokenSerializer(many=True))
    def get(self, request):
        require_scope(request, "read", "list tokens")
        return Response(s.TokenSerializer(ApiToken.objects.filter(user=request.user), many=True).data)

    @extend_schema(summary="Create a token; the secret is shown once", request=s.TokenCreateSerializer,
                   responses={201: s.TokenCreatedSerializer})
    def post(self, request):
        require_scope(request, "write", "create tokens")
        data = validated(s.TokenCreateSerializer, request.data)
        creator = request.auth if isinstance(request.auth, ApiToken) else None
        token, secret = tokens.token_create(user=request.user, creator=creator, **data)
        return Response({**s.TokenSerializer(token).data, "token": secret}, status=201)


class TokenDetailView(APIView):
    @extend_schema(summary="Revoke a token", responses={204: None})
    def delete(self, request, token_id):
        require_scope(request, "write", "revoke tokens")
        tokens.token_revoke(user=request.user, token_id=token_id)
        return Response(status=204)
