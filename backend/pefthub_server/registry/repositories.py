"""Repositories: create (in your namespace or a team's), update description and visibility, delete.

A push creates a repository too, with its first version (``push.version_create``), from
the same :func:`repository_new` and :func:`repository_insert`. Names are unique within a
namespace ignoring case: `acme/Bot` cannot join `acme/bot`.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Lower

from pefthub.protocol.refs import check_name, parse_ref
from pefthub.protocol.words import with_article
from pefthub_server.core.errors import Conflict, NotFound, ValidationFailed
from pefthub_server.registry.models import Membership, Namespace, Repository, Role, Version
from pefthub_server.registry.selectors import (
    readable_repositories,
    repository_get,
    require_namespace_role,
    version_resolve,
)
from pefthub_server.registry.teams import user_namespace_ensure


def base_resolve(*, user, ref: str) -> tuple[Repository, Version | None]:
    """The model repository ``ref`` names (readable by ``user``) and its version, None while it has none."""
    parsed = parse_ref(ref, field="base_model")
    if not parsed.explicit:
        # A push's common case in one query: the readable model's newest version, with what a push shows of it.
        newest = (
            Version.objects.filter(repository__in=readable_repositories(user), repository__namespace__name=parsed.namespace,
                                   repository__name=parsed.name, repository__kind=Repository.Kind.MODEL,
                                   number=F("repository__latest_number"))
            .select_related("repository__namespace").order_by()[:1]
        )
        for version in newest:
            return version.repository, version
    base = repository_get(user=user, namespace=parsed.namespace, name=parsed.name)
    if base.kind != Repository.Kind.MODEL:
        raise ValidationFailed(f"base_model `{base.full_name}` is {with_article(base.kind)} repository, not a model.")
    version = version_resolve(repo=base, revision=parsed.revision) if base.latest_number else None
    return base, version


def _check_choice(field: str, value: str, choices) -> None:
    if value not in choices.values:
        raise ValidationFailed(f"{field} {value!r} is invalid; use one of {', '.join(choices.values)}.")


def names_like(namespace, name: str):
    """The repositories of ``namespace`` (a Namespace, or an ``OuterRef`` to one) named ``name`` in any case (at
    most one): a lookup the unique index on (namespace, LOWER(name)) serves, where ``name__iexact`` (UPPER) reads
    every repository of the namespace."""
    return Repository.objects.alias(lower_name=Lower("name")).filter(namespace=namespace,
                                                                     lower_name=Lower(Value(name))).order_by()


def _name_taken(namespace: Namespace, name: str) -> Conflict | None:
    """A 409 naming the repository that holds ``name`` in ``namespace`` (in any case), or None."""
    existing = next(iter(names_like(namespace, name).values_list("name", flat=True)[:1]), None)
    if existing is None:
        return None
    if existing == name:
        return Conflict(f"Repository `{namespace.name}/{name}` already exists.")
    return Conflict(f"Repository `{namespace.name}/{existing}` already exists and names may not differ only in case: "
                    f"use `{namespace.name}/{existing}`, or a name other than `{name}`.")


def repository_new(
    *, user, namespace: Namespace, name: str, kind: str, visibility: str = Repository.Visibility.PRIVATE,
    description: str = "", name_free: bool = False,
) -> Repository:
    """A repository not saved yet, each field checked, its name free in its namespace (in any case).

    ``name_free``: the caller just found no repository named so in any case (:func:`names_like`); a
    repository made meanwhile still makes :func:`repository_insert` a 409.
    """
    check_name(name)
    _check_choice("kind", kind, Repository.Kind)
    _check_choice("visibility", visibility, Repository.Visibility)
    if not name_free and (taken := _name_taken(namespace, name)) is not None:
        raise taken
    return Repository(namespace=namespace, name=name, kind=kind, visibility=visibility, description=description or "",
                      created_by=user)


def repository_insert(repo: Repository) -> Repository:
    """Save a :func:`repository_new`; one made meanwhile under the same name is a 409 naming it."""
    try:
        with transaction.atomic():
            repo.save(force_insert=True)
    except IntegrityError:
        raise (_name_taken(repo.namespace, repo.name) or Conflict(f"Repository `{repo.full_name}` already exists.")) from None
    return repo


def repository_create(
    *, user, namespace: str | None = None, name: str, kind: str, visibility: str = Repository.Visibility.PRIVATE,
    description: str = "", base_model: str | None = None,
) -> Repository:
    """An empty repository (``POST /repos``, ``hub.create_repo``); a push creates one with its first version."""
    check_name(name)
    ns = Namespace.objects.filter(name=namespace).first() if namespace else user_namespace_ensure(user=user)
    if ns is None:
        raise NotFound(f"Namespace `{namespace}` not found.")
    if ns.user_id != user.id:
        if not Membership.objects.filter(namespace=ns, user=user).exists():
            raise NotFound(f"Namespace `{namespace}` not found (or you are not a member).")
        require_namespace_role(user, ns, Role.WRITE, action=f"create repositories in `{ns.name}`")
    repo = repository_new(user=user, namespace=ns, name=name, kind=kind, visibility=visibility, description=description)
    if kind == Repository.Kind.ADAPTER:
        if not base_model:
            raise ValidationFailed(
                "An adapter repository needs a base model: pass base_model=`namespace/name` of a model repository.",
                code="base_model_required",
            )
        repo.base_model, _ = base_resolve(user=user, ref=base_model)
    elif base_model:
        raise ValidationFailed(f"Only adapter repositories name a base model; this one is {with_article(kind)}.")
    return repository_insert(repo)


def repository_update(*, user, repo: Repository, description: str | None = None, visibility: str | None = None) -> Repository:
    fields = []
    if description is not None:
        repo.description = description
        fields.append("description")
    if visibility is not None and visibility != repo.visibility:
        _check_choice("visibility", visibility, Repository.Visibility)
        require_namespace_role(user, repo.namespace, Role.ADMIN, action=f"change the visibility of `{repo.full_name}`")
        repo.visibility = visibility
        fields.append("visibility")
    if fields:
        repo.save(update_fields=[*fields, "updated_at"])
    return repo


def repository_delete(*, user, repo: Repository) -> None:
    require_namespace_role(user, repo.namespace, Role.ADMIN, action=f"delete `{repo.full_name}`")
    if Version.objects.filter(base_version__repository=repo).exclude(repository=repo).exists() or repo.adapters.exists():
        raise Conflict(f"`{repo.full_name}` is the base of other repositories; delete or re-base those first.")
    repo.delete()
