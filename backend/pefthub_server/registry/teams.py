"""Namespaces, users and teams: who belongs where, with which role.

User and team names share one namespace and are unique ignoring case (`acme` and `ACME`
cannot both exist); a clash is a 409 naming the holder.
"""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.urls import URLResolver, get_resolver

from pefthub.protocol.refs import check_namespace
from pefthub_server.core.errors import Conflict, NotFound, ValidationFailed
from pefthub_server.registry.models import Membership, Namespace, Role
from pefthub_server.registry.selectors import require_namespace_role

User = get_user_model()


def _name_taken(name: str) -> Conflict:
    """The 409 for a user or team name that clashes (ignoring case) with an existing one, naming it."""
    holder = Namespace.objects.filter(name__iexact=name).first()
    if holder is None:
        return Conflict(f"The name `{name}` is taken.")
    what = "a user" if holder.kind == Namespace.Kind.USER else "a team"
    if holder.name == name:
        return Conflict(f"The name `{name}` is taken by {what}.")
    return Conflict(f"The name `{name}` differs only in case from {what} named `{holder.name}`; user and team names "
                    "may not differ only in case: pick another name.")


@cache
def reserved_names() -> frozenset[str]:
    """The hub's own first path segments (`api`, `jobs`, `healthz`, `static`...), read from the URL conf.

    A user or team with one of these names would have a page at `/<name>` that the hub's own route answers.
    """
    names, patterns = {settings.STATIC_URL.strip("/").split("/")[0]}, list(get_resolver().url_patterns)
    while patterns:
        pattern = patterns.pop()
        route = str(pattern.pattern).lstrip("^")
        if not route and isinstance(pattern, URLResolver):
            patterns.extend(pattern.url_patterns)  # an include at the root: its routes are top-level too
            continue
        first = route.split("/")[0]
        if first and first.replace("-", "").replace("_", "").isalnum():  # a literal segment, not <namespace>
            names.add(first.lower())
    return frozenset(names)


def _check_new_namespace(name: str, *, field: str) -> None:
    check_namespace(name, field=field)
    if name.lower() in reserved_names():
        raise ValidationFailed(f"The {field} `{name}` is one of the hub's own addresses (/{name.lower()}); pick another "
                               "name.", detail={"field": field, "reserved": sorted(reserved_names())})


def user_namespace_ensure(*, user) -> Namespace:
    ns = Namespace.objects.filter(user=user).first()
    if ns is not None:
        return ns
    try:
        with transaction.atomic():
            return Namespace.objects.create(user=user, name=user.username, kind=Namespace.Kind.USER)
    except IntegrityError:
        ns = Namespace.objects.filter(user=user).first()  # made meanwhile by a concurrent request
        if ns is None:
            raise _name_taken(user.username) from None
        return ns


def team_create(*, user, name: str) -> Namespace:
    _check_new_namespace(name, field="team name")
    try:
        with transaction.atomic():
            team = Namespace.objects.create(name=name, kind=Namespace.Kind.TEAM)
            Membership.objects.create(namespace=team, user=user, role=Role.ADMIN)
    except IntegrityError:
        raise _name_taken(name) from None
    return team


def _team_for_admin(*, user, team: str) -> Namespace:
    ns = Namespace.objects.filter(name=team, kind=Namespace.Kind.TEAM).first()
    if ns is None or not Membership.objects.filter(namespace=ns, user=user).exists():
        raise NotFound(f"Team `{team}` not found (or you are not a member).")
    require_namespace_role(user, ns, Role.ADMIN, action=f"manage the members of `{team}`")
    return ns


def _check_role(role: str) -> str:
    if role not in Role.values:
        raise ValidationFailed(f"Role {role!r} is invalid; use one of {', '.join(Role.values)}.")
    return role


def member_add(*, user, team: str, username: str, role: str) -> Membership:
    ns = _team_for_admin(user=user, team=team)
    member = User.objects.filter(username=username).first()
    if member is None:
        raise NotFound(f"User `{username}` not found.")
    try:
        with transaction.atomic():
            return Membership.objects.create(namespace=ns, user=member, role=_check_role(role))
    except IntegrityError:
        raise Conflict(f"`{username}` is already a member of `{team}`; PATCH the member to change the role.") from None


def _membership(ns: Namespace, username: str) -> Membership:
    membership = Membership.objects.filter(namespace=ns, user__username=username).select_related("user").first()
    if membership is None:
        raise NotFound(f"`{username}` is not a member of `{ns.name}`.")
    return membership


def _ensure_other_admin(ns: Namespace, membership: Membership) -> None:
    if membership.role == Role.ADMIN and not Membership.objects.filter(namespace=ns, role=Role.ADMIN).exclude(
        pk=membership.pk
    ).exists():
        raise ValidationFailed(f"`{membership.user.username}` is the last admin of `{ns.name}`; make another admin first.")


def member_set_role(*, user, team: str, username: str, role: str) -> Membership:
    ns = _team_for_admin(user=user, team=team)
    with transaction.atomic():
        membership = _membership(ns, username)
        if role != Role.ADMIN:
            _ensure_other_admin(ns, membership)
        membership.role = _check_role(role)
        membership.save(update_fields=["role"])
    return membership


def member_remove(*, user, team: str, username: str) -> None:
    ns = _team_for_admin(user=user, team=team)
    with transaction.atomic():
        membership = _membership(ns, username)
        _ensure_other_admin(ns, membership)
        membership.delete()


def user_ensure(*, username: str, team: str | None = None, role: str = Role.WRITE, staff: bool = False):
    """Create the user (and team, and membership) if missing; used by `pefthub-server adduser`."""
    if Namespace.objects.filter(name__iexact=username).exists():
        check_namespace(username, field="user name")  # an existing user keeps a name reserved since
    else:
        _check_new_namespace(username, field="user name")
    _check_role(role)
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        if staff and not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
        user.save()
        if Namespace.objects.filter(name__iexact=username).exclude(user=user).exists():
            raise _name_taken(username)
        user_namespace_ensure(user=user)
        if team:
            ns = Namespace.objects.filter(name__iexact=team).first()
            if ns is None:
                _check_new_namespace(team, field="team name")
                ns = Namespace.objects.create(name=team, kind=Namespace.Kind.TEAM)
            elif ns.name != team:
                raise _name_taken(team)
            elif ns.kind != Namespace.Kind.TEAM:
                raise Conflict(f"`{team}` is a user, not a team.")
            Membership.objects.update_or_create(namespace=ns, user=user, defaults={"role": role})
    return user
