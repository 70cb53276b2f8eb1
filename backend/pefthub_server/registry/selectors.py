"""Reads, and the one place that decides who may see and change what.

Rights: a namespace's own user and its `admin` members administer it; `write` members
push; `read` members read its private repos. `internal` repos are readable by any
signed-in user, `public` ones by anyone. Objects a caller may not read are reported as
not found, so their existence does not leak.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from pefthub_server.core.errors import NotFound, PermissionDenied
from pefthub_server.registry.models import (
    ROLE_RANK,
    Alias,
    Membership,
    Namespace,
    Repository,
    Role,
    Version,
)
from pefthub_server.registry.refs import DIGEST_RE, LATEST


def namespace_role(user, namespace: Namespace) -> str | None:
    if not user.is_authenticated:
        return None
    if namespace.user_id == user.id:
        return Role.ADMIN
    return Membership.objects.filter(namespace=namespace, user=user).values_list("role", flat=True).first()


def _member_namespaces(user) -> QuerySet:
    return Namespace.objects.filter(Q(user=user) | Q(memberships__user=user)).values("id")


def readable_repositories(user) -> QuerySet[Repository]:
    if not user.is_authenticated:
        return Repository.objects.filter(visibility=Repository.Visibility.PUBLIC)
    return Repository.objects.filter(
        Q(visibility__in=[Repository.Visibility.PUBLIC, Repository.Visibility.INTERNAL])
        | Q(namespace__in=_member_namespaces(user))
    )


def repository_list(*, user, kind=None, namespace=None, base_model=None, peft_type=None, search=None):
    qs = readable_repositories(user).select_related("namespace", "base_model__namespace")
    if kind:
        qs = qs.filter(kind=kind)
    if namespace:
        qs = qs.filter(namespace__name=namespace)
    if base_model:
        ns, _, name = base_model.partition("/")
        qs = qs.filter(base_model__namespace__name=ns, base_model__name=name)
    if peft_type:
        qs = qs.filter(peft_type__iexact=peft_type)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search))
    return qs.order_by("namespace__name", "name")


def repository_get(*, user, namespace: str, name: str) -> Repository:
    """The repository if ``user`` may read it; 404 otherwise, so existence does not leak."""
    repo = (
        readable_repositories(user)
        .select_related("namespace", "base_model__namespace")
        .filter(namespace__name=namespace, name=name)
        .first()
    )
    if repo is None:
        raise NotFound(f"Repository `{namespace}/{name}` not found (or you have no access to it).")
    return repo


def require_namespace_role(user, namespace: Namespace, need: str, *, action: str) -> str:
    role = namespace_role(user, namespace)
    if role is None or ROLE_RANK[role] < ROLE_RANK[need]:
        raise PermissionDenied(
            f"You need the `{need}` role in `{namespace.name}` to {action}"
            + (f"; you have `{role}`." if role else "; you are not a member.")
        )
    return role


def version_resolve(*, repo: Repository, revision: str) -> Version:
    """A version by number, alias (`latest` included) or `sha256:` digest."""
    qs = Version.objects.filter(repository=repo).select_related(
        "created_by", "base_version__repository__namespace"
    )
    version = None
    if revision.isdigit():
        version = qs.filter(number=int(revision)).first()
    elif match := DIGEST_RE.match(revision):
        version = qs.filter(digest=match.group(1)).order_by("-number").first()
    elif revision == LATEST:
        version = qs.order_by("-number").first()
    else:
        alias = Alias.objects.filter(repository=repo, name=revision).values_list("version_id", flat=True).first()
        version = qs.filter(pk=alias).first() if alias else None
    if version is None:
        raise NotFound(f"`{repo.full_name}` has no version `{revision}`.")
    return version


def blob_readable(*, user, sha256: str) -> bool:
    return Version.objects.filter(
        files__blob_id=sha256, repository__in=readable_repositories(user)
    ).exists()
