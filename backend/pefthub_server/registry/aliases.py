"""Aliases: movable names for versions (`prod`, `staging`); every set, move and delete is recorded."""

from __future__ import annotations

from django.db import transaction

from pefthub.protocol.refs import LATEST, check_alias
from pefthub.protocol.words import with_article
from pefthub_server.core.errors import Conflict, NotFound, ValidationFailed
from pefthub_server.registry.models import Alias, AliasMove, Repository, Version
from pefthub_server.registry.selectors import version_resolve


def check_settable(alias: str) -> str:
    """An alias name a user may set: in the grammar, and not `latest`, which always names the newest version."""
    check_alias(alias)
    if alias == LATEST:
        raise ValidationFailed("`latest` always names the newest version; it cannot be set, moved or deleted.")
    return alias


def _locked(repo: Repository) -> Repository:
    """The repository's row, locked to the end of the transaction: one alias change per repository at a time.

    Locking the alias row is not enough: an alias that does not exist yet has no row to
    lock, so two first moves would both insert (IntegrityError), and a move waiting on a
    row that a delete removes would find nothing. Pushes take the same lock.
    """
    locked = Repository.objects.select_for_update().filter(pk=repo.pk).first()
    if locked is None:
        raise NotFound(f"`{repo.full_name}` was deleted.")
    return locked


def alias_move(*, user, repo: Repository, alias: str, version: Version, ref: str = Alias.Ref.TAG) -> Alias:
    """Point ``alias`` at ``version`` and record the move; the caller holds the repository's row lock.

    ``ref``: what a new alias is listed as in the Hugging Face view; a moved one keeps its own.
    """
    current = Alias.objects.filter(repository=repo, name=alias).select_related("version").first()
    if current is not None and current.version_id == version.pk:
        return current
    AliasMove.objects.create(
        repository=repo, alias=alias, from_number=current.version.number if current else None,
        to_number=version.number, moved_by=user,
    )
    if current is None:
        return Alias.objects.create(repository=repo, name=alias, version=version, updated_by=user, ref=ref)
    current.version = version
    current.updated_by = user
    current.save(update_fields=["version", "updated_by", "updated_at"])
    return current


def alias_set(*, user, repo: Repository, alias: str, revision: str) -> Alias:
    """Point ``alias`` at ``revision``; the alias as this move left it (a concurrent delete may follow)."""
    check_settable(alias)
    version = version_resolve(repo=repo, revision=str(revision))
    with transaction.atomic():
        return alias_move(user=user, repo=_locked(repo), alias=alias, version=version)


def alias_create(*, user, repo: Repository, alias: str, version: Version, ref: str) -> Alias:
    """A new alias at ``version`` (Hugging Face's create_branch and create_tag); a 409 if the name is taken."""
    check_settable(alias)
    with transaction.atomic():
        locked = _locked(repo)
        existing = Alias.objects.filter(repository=locked, name=alias).values_list("ref", flat=True).first()
        if existing is not None:
            raise Conflict(f"`{repo.full_name}` already has {with_article(existing)} `{alias}`.")
        return alias_move(user=user, repo=locked, alias=alias, version=version, ref=ref)


def alias_delete(*, user, repo: Repository, alias: str) -> None:
    check_settable(alias)
    with transaction.atomic():
        locked = _locked(repo)
        current = Alias.objects.filter(repository=locked, name=alias).select_related("version").first()
        if current is None:
            raise NotFound(f"`{repo.full_name}` has no alias `{alias}`.")
        AliasMove.objects.create(
            repository=locked, alias=alias, from_number=current.version.number, to_number=None, moved_by=user
        )
        current.delete()
