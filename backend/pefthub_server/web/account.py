"""Account pages: sign-in (password or API token) and sign-out, my tokens, my teams.

A page's rights are its session's: a password session holds the user's full rights (like an
`admin` token), a token session its token's scope (core.auth.SessionTokenMiddleware sets
``request.auth``), checked by the same ``require_scope`` and written by the same services as the
API (core.tokens, registry.teams), so the pages and the API cannot disagree.
"""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import authenticate, login, logout
from django.core.paginator import Paginator
from django.db.models import Count
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework.exceptions import Throttled

from pefthub_server.core import tokens
from pefthub_server.core.auth import SESSION_TOKEN_KEY, require_scope, token_session_start
from pefthub_server.core.errors import HubError, NotFound
from pefthub_server.core.models import SCOPE_GRANTS, USER_SCOPES, ApiToken, Scope, may_hold_worker_rights
from pefthub_server.registry import teams
from pefthub_server.registry.api.serializers import TokenCreateSerializer
from pefthub_server.registry.models import Membership, Namespace, Role
from pefthub_server.web.errors import refused

#: tokens per page of /account/tokens
TOKENS_PER_PAGE = 100


def signed_in(view):
    """Send visitors to the sign-in page (coming back here); a service's refusal becomes a page."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect(f"/account/sign-in?{urlencode({'next': request.get_full_path()})}")
        try:
            return view(request, *args, **kwargs)
        except HubError as exc:
            return refused(request, exc)

    return wrapper


# --- sign-in, sign-out ------------------------------------------------------------------------


def _local_next(value: str | None) -> str:
    """Where to go after signing in: ``value`` only if it is a path on this site (no open redirect)."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\", "/account/sign-")) \
            and url_has_allowed_host_and_scheme(value, allowed_hosts=set()):
        return value
    return "/"


@sensitive_post_parameters("password", "token")
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def sign_in(request):
    source = request.POST if request.method == "POST" else request.GET
    context = {"next": _local_next(source.get("next")), "username": source.get("username", "")[:150]}
    if request.method != "POST":
        return render(request, "web/account/sign_in.html", context)
    secret, username, password = request.POST.get("token", ""), context["username"], request.POST.get("password", "")
    if secret.strip():
        try:
            token = token_session_start(request, secret[:200])
        except (HubError, Throttled) as exc:
            return refused(request, exc, template="web/account/sign_in.html", **context)
        messages.success(request, f"Signed in as {token.user.username} with token `{token.name}` "
                                  f"(scope {token.scope}).")
        return redirect(context["next"])
    if not username or not password:
        return render(request, "web/account/sign_in.html", {
            **context, "error": "Give your username and password, or paste an API token."}, status=400)
    user = authenticate(request, username=username, password=password[:4096])  # django-axes counts failures
    if user is None:
        # A locked-out username: AxesMiddleware answers with the lockout page (429) instead of this one.
        return render(request, "web/account/sign_in.html", {
            **context, "error": "Wrong username or password. Accounts made by `pefthub-server adduser` without "
                                "--password have none: sign in with an API token instead."}, status=401)
    login(request, user)
    request.session.pop(SESSION_TOKEN_KEY, None)  # a password session is not capped by an earlier token
    return redirect(context["next"])


@require_POST
def sign_out(request):
    logout(request)
    return redirect("/")


# --- tokens ---------------------------------------------------------------------------------


def _creatable_scopes(request) -> list[str]:
    """The scopes this session may mint: those its own token covers (all for a password session)."""
    cap = request.auth
    return [scope for scope in USER_SCOPES
            if (cap is None or SCOPE_GRANTS[scope] <= SCOPE_GRANTS[cap.scope])
            and (scope != Scope.WORKER or may_hold_worker_rights(request.user))]


def _tokens_page(request, *, status: int = 200, **context):
    listed = ApiToken.objects.filter(user=request.user).exclude(scope=Scope.JOB).order_by("-created_at", "-pk")
    page = Paginator(listed, TOKENS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "web/account/tokens.html", {
        "page": page, "scopes": _creatable_scopes(request), "session_token": request.auth,
        "may_write": request.auth is None or request.auth.grants("write"), **context}, status=status)


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
@signed_in
def token_list(request):
    require_scope(request, "read", "list tokens")
    if request.method != "POST":
        return _tokens_page(request)
    require_scope(request, "write", "create tokens")
    form = {key: request.POST.get(key, "").strip() for key in ("name", "scope", "expires_in_days")}
    data = TokenCreateSerializer(data={"name": form["name"] or "default", "scope": form["scope"] or Scope.READ,
                                       "expires_in_days": form["expires_in_days"] or None})
    if not data.is_valid():
        errors = "; ".join(f"{field}: {' '.join(str(e) for e in errs)}" for field, errs in data.errors.items())
        return _tokens_page(request, status=400, error=errors, form=form)
    try:
        token, secret = tokens.token_create(user=request.user, creator=request.auth, **data.validated_data)
    except HubError as exc:
        return _tokens_page(request, status=exc.status, error=exc.message, form=form)
    return render(request, "web/account/token_created.html", {"token": token, "secret": secret}, status=201)


@require_POST
@signed_in
def token_revoke(request, token_id: int):
    require_scope(request, "write", "revoke tokens")
    tokens.token_revoke(user=request.user, token_id=token_id)
    messages.success(request, "Token revoked: it no longer works anywhere, and sessions signed in with it end.")
    return redirect("web:tokens")


# --- teams ----------------------------------------------------------------------------------


@require_GET
@signed_in
def team_list(request):
    require_scope(request, "read", "list your teams")
    memberships = (Membership.objects.filter(user=request.user, namespace__kind=Namespace.Kind.TEAM)
                   .select_related("namespace").annotate(members=Count("namespace__memberships"))
                   .order_by("namespace__name"))
    return render(request, "web/account/teams.html", {"memberships": memberships})


def _team_page(request, team: str, *, status: int = 200, error: str | None = None):
    require_scope(request, "read", "see teams")
    mine = (Membership.objects.filter(namespace__name=team, namespace__kind=Namespace.Kind.TEAM, user=request.user)
            .select_related("namespace").first())
    if mine is None:
        raise NotFound(f"Team `{team}` not found (or you are not a member).")
    members = mine.namespace.memberships.select_related("user").order_by("user__username")
    manages = mine.role == Role.ADMIN and (request.auth is None or request.auth.grants("write"))
    return render(request, "web/account/team.html", {
        "team": mine.namespace, "role": mine.role, "members": members, "manages": manages, "roles": Role.values,
        "error": error}, status=status)


@require_GET
@signed_in
def team_detail(request, team: str):
    return _team_page(request, team)


def _team_change(change):
    """A POST changing a team's members: the service's refusal is shown on the team page with its status."""

    @wraps(change)
    def wrapper(request, team: str, **kwargs):
        try:
            require_scope(request, "write", "manage team members")
            done = change(request, team, **kwargs)
        except HubError as exc:
            if exc.status == 404 and not Membership.objects.filter(namespace__name=team, user=request.user).exists():
                raise  # not a member: the team is not found, whatever was asked
            return _team_page(request, team, status=exc.status, error=exc.message)
        messages.success(request, done)
        if not Membership.objects.filter(namespace__name=team, user=request.user).exists():
            return redirect("web:teams")  # left the team
        return redirect("web:team", team=team)

    return require_POST(signed_in(wrapper))


@_team_change
def member_add(request, team: str) -> str:
    username, role = request.POST.get("username", "").strip()[:150], request.POST.get("role", Role.READ)
    teams.member_add(user=request.user, team=team, username=username, role=role)
    return f"Added {username} to {team} with the {role} role."


@_team_change
def member_role(request, team: str, username: str) -> str:
    role = request.POST.get("role", "")
    teams.member_set_role(user=request.user, team=team, username=username, role=role)
    return f"{username} now has the {role} role in {team}."


@_team_change
def member_remove(request, team: str, username: str) -> str:
    teams.member_remove(user=request.user, team=team, username=username)
    return f"Removed {username} from {team}."
