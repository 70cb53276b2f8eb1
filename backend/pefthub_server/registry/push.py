"""Pushing a version: negotiate which blobs are missing, then commit the version from verified blobs.

A push cites blobs by hash, and knowing a hash is not access: a blob is ``present`` only
when the caller possesses it (``blobs.blobs_possessed``: it can read a version holding it,
or uploaded it itself), and everything else must be uploaded to a target bound to the
caller. A push that says its ``kind`` may target a repository that does not exist yet:
the commit creates it with its first version, so a refused first push leaves nothing.
An empty `model` repository (what Hugging Face's ``create_repo`` makes, not knowing yet)
takes its kind from its first version: `adapter_config.json` at the top level makes it
an adapter (:func:`kind_for_files`).

A negotiation may carry the commit's own fields (``commit``): when the pusher possesses every
blob already, it commits at once, with the target, base and possession it has just resolved,
so a push of bytes the hub holds is one request.

A commit runs in four steps, and nothing is visible until the last: verify every
blob's possession, size and hash (:func:`verify_blobs`), read and check every file's
content (:func:`_inspect`, which writes nothing), store what the hub rewrites (an
adapter's config names its base by hub reference), then create the repository if it is
new, the version, its files and its aliases in one transaction under the repository's
row lock.

What reading a blob finds depends on its bytes alone, so it is recorded by sha256
(:class:`~pefthub_server.registry.models.BlobCheck`): a commit citing blobs an earlier
commit read reads nothing from the store. The rewritten config is deterministic (sorted
keys), so the same pushed config on the same base is stored once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery

from pefthub.protocol.manifest import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MODEL_CONFIG,
    Entry,
    dump_json,
    manifest_digest,
    parse_manifest,
)
from pefthub.protocol.refs import check_name, check_namespace
from pefthub.protocol.words import with_article
from pefthub_server.core.errors import Conflict, HubError, ValidationFailed
from pefthub_server.registry import acceptance, compatibility
from pefthub_server.registry.aliases import alias_move, check_settable
from pefthub_server.registry.blobs import (
    blob_checks_found,
    blob_checks_record,
    blob_register,
    blobs_possessed,
    upload_accept,
)
from pefthub_server.registry.models import (
    Alias,
    Blob,
    Membership,
    Namespace,
    Repository,
    Role,
    Version,
    VersionFile,
)
from pefthub_server.registry.repositories import base_resolve, names_like, repository_insert, repository_new
from pefthub_server.registry.selectors import repository_get
from pefthub_server.registry.storage import BlobStore, get_blob_store, missing_blob

#: the prefix read of every file: its magic bytes and (mostly) its whole safetensors header
_PREFIX = 64 * 1024


def manifest_entries(files) -> list[Entry]:
    """The manifest a client sent, every path, hash, size and file type checked before any byte moves."""
    entries = parse_manifest(files)
    for entry in entries:
        acceptance.check_file_type(entry.path)
        if entry.size > settings.PEFTHUB_MAX_FILE_SIZE:
            raise ValidationFailed(
                f"`{entry.path}` is {entry.size} bytes; the limit is {settings.PEFTHUB_MAX_FILE_SIZE} (PEFTHUB_MAX_FILE_SIZE).",
                code="too_large", status=413,
            )
    return entries


@dataclass(frozen=True)
class Head:
    """What a revision held when a commit was built on it: the newest version (``alias`` None) or an alias's."""

    version: Version | None
    alias: str | None = None

    def check(self, repo: Repository, latest: Version | None) -> None:
        """Under the repository's row lock: the revision still holds what the commit was built on."""
        if self.alias is None:
            now = latest
        else:
            now = Alias.objects.filter(repository=repo, name=self.alias).select_related("version").first()
            now = now.version if now is not None else None
        if (now.pk if now else None) != (self.version.pk if self.version else None):
            where = f"`{self.alias}`" if self.alias else "its newest version"
            raise HubError(f"`{repo.full_name}` changed while this commit was made ({where} moved); build it on "
                           "what is there now and commit again.", code="head_moved", status=412)


@dataclass(frozen=True)
class PushTarget:
    """Where a push writes: a repository, or (``repo`` None) a name it will create in ``namespace``."""

    namespace: Namespace
    name: str
    repo: Repository | None
    #: the pusher's role in ``namespace`` where it was looked up already, else None
    role: str | None = None
    #: (``repo`` None) no repository of ``namespace`` had this name in any case when the target was found
    name_free: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.namespace.name}/{self.name}"


def _namespace_with_role(user, namespace: str, name: str) -> tuple[Namespace | None, str | None, str | None]:
    """The namespace named so, ``user``'s role in it (as ``selectors.namespace_role`` says) and the name of its
    repository called ``name`` in any case (:func:`names_like`; None if none is), in one query."""
    role = Membership.objects.filter(namespace=OuterRef("pk"), user=user).values("role")[:1]
    same_name = names_like(OuterRef("pk"), name).values("name")[:1]
    ns = (Namespace.objects.filter(name=namespace).annotate(member_role=Subquery(role), same_name=Subquery(same_name))
          .order_by().first())
    if ns is None:
        return None, None, None
    return ns, (Role.ADMIN if ns.user_id == user.id else ns.member_role), ns.same_name


def push_target(*, user, namespace: str, name: str, create: bool) -> PushTarget:
    """The repository a push writes to, or (``create``) the name of one to make in a namespace ``user`` is in.

    A repository ``user`` cannot read and a namespace it is no member of get the same 404, so
    existence does not leak. The caller checks the token's scope and the `write` role next.
    """
    check_namespace(namespace)
    check_name(name)
    ns, role, same_name = _namespace_with_role(user, namespace, name) if user.is_authenticated else (None, None, None)
    if role is not None:
        # A member reads every repository of its namespace (selectors.readable_repositories): the lookup, in any
        # case, found the repository, or told that the name is free.
        found = (Repository.objects.select_related("base_model__namespace").filter(namespace=ns, name=name).first()
                 if same_name == name else None)
        if found is not None:
            found.namespace = ns
            return PushTarget(ns, name, found, role)
        if create:
            return PushTarget(ns, name, None, role, name_free=same_name is None)
    # Not a member (a readable repository here is a 403 for the role, an unreadable one a 404), or no such
    # repository to push to: what reading it says.
    repo = repository_get(user=user, namespace=namespace, name=name)
    return PushTarget(repo.namespace, repo.name, repo)


def kind_for_files(repo: Repository, paths) -> str:
    """The kind ``repo`` has once a version of ``paths`` is pushed: an empty `model` repository holding
    `adapter_config.json` at the top level becomes an adapter; every other repository keeps its kind."""
    if repo.kind == Repository.Kind.MODEL and not repo.latest_number and ADAPTER_CONFIG in paths:
        return Repository.Kind.ADAPTER
    return repo.kind


def _repository(*, user, target: PushTarget, kind: str | None, visibility: str | None, description: str | None,
                entries: list[Entry]) -> Repository:
    """The target's repository (its kind decided by :func:`kind_for_files`), or a new one of ``kind``
    (checked, not saved yet)."""
    if target.repo is None:
        return repository_new(user=user, namespace=target.namespace, name=target.name, kind=kind or "",
                              visibility=visibility or Repository.Visibility.PRIVATE, description=description or "",
                              name_free=target.name_free)
    repo = target.repo
    repo.kind = kind_for_files(repo, {e.path for e in entries})
    if kind not in (None, repo.kind):
        raise ValidationFailed(f"`{target.full_name}` is {with_article(repo.kind)} repository; this push is {with_article(kind)}.",
                               code="kind_mismatch")
    return repo


@dataclass
class Negotiation:
    """What a negotiation answers: the blobs to upload, with their targets, and the ones ``user`` possesses;
    and, when it was asked to commit and nothing was missing, the version (``created`` as :func:`version_create`)."""

    missing: list[dict]
    present: list[str]
    version: Version | None = None
    created: bool = False


def _check_commit_fields(*, metadata, aliases) -> None:
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationFailed("metadata must be a JSON object.")
    for alias in aliases:
        check_settable(alias)


def upload_negotiate(*, user, target: PushTarget, files, base_url: str, base_model: str | None = None,
                     kind: str | None = None, visibility: str | None = None, description: str | None = None,
                     job=None, commit: dict | None = None) -> Negotiation:
    """Which blobs the client must upload, and where. Bad paths, file types, a new repository's
    name and kind and an adapter's base fail here, before any byte moves.

    ``present`` lists only blobs ``user`` possesses, with the declared size; every other
    blob is ``missing``, with a target bound to ``user``, even if the hub holds its bytes.
    ``job``: the push is that job's token's (see :func:`blobs.blobs_possessed`).
    ``commit``: the commit's own fields (``message``, ``metadata``, ``aliases``, ``job``): with nothing missing,
    the version is committed now, as :func:`version_create` would, from the target, base and possession
    just resolved (in this request, so nothing can have changed in between); its checks and errors are
    the commit's.
    """
    entries = manifest_entries(files)
    if commit is not None:
        _check_commit_fields(metadata=commit.get("metadata"), aliases=commit.get("aliases", ()))
    repo = _repository(user=user, target=target, kind=kind, visibility=visibility, description=description,
                       entries=entries)
    sizes: dict[str, int] = {}
    for entry in entries:
        if sizes.setdefault(entry.sha256, entry.size) != entry.size:
            raise ValidationFailed(f"Blob {entry.sha256} is declared with two sizes.", code="size_mismatch")
    base_version = _base_for_push(user=user, repo=repo, base_model=base_model)
    possessed = blobs_possessed(user=user, sha256s=sizes, job=job)
    present = sorted(sha for sha, size in sizes.items() if possessed.get(sha) == size)
    if commit is not None and len(present) == len(sizes):
        fields = dict(commit)
        result_of = fields.pop("job", None)  # the running job this is the result of (a job token's own: the view)
        version, created = _commit(user=user, repo=repo, entries=entries, base_version=base_version,
                                   possessed=possessed, job=result_of, **fields)
        return Negotiation([], present, version, created)
    store = get_blob_store()
    missing = [
        {"sha256": sha, "size": size, "upload": store.upload_target(sha, size, user_id=user.pk, base_url=base_url)}
        for sha, size in sizes.items() if possessed.get(sha) != size
    ]
    return Negotiation(missing, present)


def verify_blobs(*, user, entries: list[Entry], job=None, granted: Mapping[str, int] | None = None,
                 checkpoint: bool = False, possessed: Mapping[str, int] | None = None) -> None:
    """Every blob is one ``user`` possesses, or its own upload, verified now; else `missing_blob`.

    A blob ``user`` cannot read gets the same `missing_blob` whether or not the hub holds
    it, whatever size was declared: only a readable blob's size may be told. ``granted``
    (sha256 -> size): blobs the caller's rights on something else let it cite (a job's
    checkpoint, as the jobs app checked). ``checkpoint``: the uploads accepted now are a checkpoint's.
    ``possessed``: what :func:`blobs.blobs_possessed` said of these blobs earlier in this request (it is
    not asked again).
    """
    if possessed is None:
        possessed = blobs_possessed(user=user, sha256s={e.sha256 for e in entries}, job=job)
    possessed = {**possessed, **(granted or {})}
    for entry in entries:
        if entry.sha256 in possessed:
            if possessed[entry.sha256] != entry.size:
                raise ValidationFailed(
                    f"`{entry.path}` is declared as {entry.size} bytes but blob {entry.sha256} has {possessed[entry.sha256]}.",
                    code="size_mismatch",
                )
            continue
        try:
            if not upload_accept(user_id=user.pk, sha256=entry.sha256, size=entry.size, checkpoint=checkpoint):
                raise missing_blob(entry.sha256)
        except ValidationFailed as exc:
            exc.message = f"`{entry.path}`: {exc.message}"
            raise
        possessed[entry.sha256] = entry.size


@dataclass
class _Inspection:
    """What a version records about itself, and the files the hub rewrites before storing them."""

    adapter_config: dict | None = None
    fingerprint: dict | None = None
    peft_type: str = ""
    rewrites: dict[str, bytes] = field(default_factory=dict)


def _prefix_reader(store: BlobStore, entry: Entry):
    """A reader of the file that fetches its first 64 KiB (one ranged GET on S3) and serves from them when it can.

    The magic-byte check and most safetensors headers then cost one request per file.
    """
    head = store.read_range(entry.sha256, 0, min(entry.size, _PREFIX))

    def read_range(start: int, length: int) -> bytes:
        if start + length <= len(head):
            return head[start : start + length]
        return store.read_range(entry.sha256, start, length)

    return read_range


def _inspect(*, repo: Repository, entries: list[Entry], base_version: Version | None,
             checks: acceptance.BlobChecks) -> _Inspection:
    """Check every file's content and compute what the version records; reads the blobs ``checks`` has
    not seen (``checks.fresh`` then holds what it found), writes nothing."""
    store = get_blob_store()
    by_path = {e.path: e for e in entries}
    headers: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for entry in entries:
        kind = acceptance.check_kind(entry.path, acceptance.check_file_type(entry.path))
        found = checks.result(entry, kind, lambda entry=entry: _prefix_reader(store, entry))
        if kind == "safetensors":
            headers[entry.path] = found
        elif kind == "config":
            configs[entry.path] = found
    result = _Inspection()
    if repo.kind == Repository.Kind.MODEL:
        if MODEL_CONFIG not in by_path or not headers:
            raise ValidationFailed(
                f"A model version needs `{MODEL_CONFIG}` and its weights as `*.safetensors` at the top level.",
                code="validation_error",
            )
        tensors = {name: info for header in headers.values() for name, info in header.items()}
        result.fingerprint = compatibility.compute_fingerprint(configs[MODEL_CONFIG], tensors)
    elif repo.kind == Repository.Kind.ADAPTER:
        if ADAPTER_CONFIG not in by_path:
            raise ValidationFailed(
                f"An adapter version needs `{ADAPTER_CONFIG}` at the top level (what peft's save_pretrained writes).",
                code="invalid_adapter_config",
            )
        config = configs[ADAPTER_CONFIG]
        adapter = acceptance.adapter_fields(config)
        weights = headers.get(ADAPTER_WEIGHTS)
        if weights is None:
            raise ValidationFailed(
                f"An adapter version needs `{ADAPTER_WEIGHTS}` (peft's save_pretrained with safe_serialization).",
                code="invalid_adapter_config",
            )
        base_label = f"{base_version.repository.full_name}@{base_version.number}"
        compatibility.check_adapter_against_base(adapter, weights, base_version.fingerprint or {}, base_label=base_label)
        # The stored config names the base by its hub reference, never a path on the pusher's machine.
        base_ref = repo.base_model.full_name
        if config.get("base_model_name_or_path") != base_ref:
            config["base_model_name_or_path"] = adapter["base_model_name_or_path"] = base_ref
            result.rewrites[ADAPTER_CONFIG] = dump_json(config)
        result.adapter_config = adapter
        result.peft_type = adapter.get("peft_type") or ""
    return result


def _store_rewrites(entries: list[Entry], rewrites: dict[str, bytes]) -> list[Entry]:
    """Store each rewritten file as a blob, unless the hub holds those bytes already; the entries with the
    rewritten files in place of the pushed ones."""
    store = get_blob_store()
    out = []
    for entry in entries:
        data = rewrites.get(entry.path)
        if data is None:
            out.append(entry)
            continue
        rewritten = Entry(entry.path, hashlib.sha256(data).hexdigest(), len(data))
        # A blob row is made only once the store holds its bytes.
        if not Blob.objects.filter(sha256=rewritten.sha256).exists():
            store.save_bytes(rewritten.sha256, data)
            blob_register(sha256=rewritten.sha256, size=rewritten.size)
        out.append(rewritten)
    return out


def _base_for_push(*, user, repo: Repository, base_model: str | None) -> Version | None:
    """The base version an adapter version is checked against (and records); None for other kinds."""
    if repo.kind != Repository.Kind.ADAPTER:
        if base_model:
            raise ValidationFailed(f"Only adapters name a base model; `{repo.full_name}` is {with_article(repo.kind)}.")
        return None
    base_ref = base_model or (repo.base_model.full_name if repo.base_model else None)
    if not base_ref:
        raise ValidationFailed("Pushing an adapter needs base_model=`namespace/name`.", code="base_model_required")
    base, base_version = base_resolve(user=user, ref=base_ref)
    if repo.base_model_id and base.pk != repo.base_model_id:
        raise ValidationFailed(
            f"`{repo.full_name}` is filed against base `{repo.base_model.full_name}`, not `{base.full_name}`.",
            code="validation_error",
        )
    if base_version is None:
        raise ValidationFailed(f"Base model `{base.full_name}` has no version yet; push the base first.")
    repo.base_model = base
    return base_version


def version_create(
    *, user, target: PushTarget, files, message: str = "", base_model: str | None = None,
    metadata: dict | None = None, aliases: list[str] | tuple[str, ...] = (), job=None,
    kind: str | None = None, visibility: str | None = None, description: str | None = None,
    head: Head | None = None, granted: Mapping[str, int] | None = None,
) -> tuple[Version, bool]:
    """Commit a version from verified blobs. Returns (version, created).

    A target without a repository gets one of ``kind`` (``visibility``, ``description``),
    made in the transaction that adds its first version. Identical to the latest version
    -> (latest, False). With ``job`` (a running Job), the job's first result is returned
    for every later commit: one result version per job. With ``head`` (a commit built on
    what a revision held), a 412 if that revision moved before the repository was locked.
    ``granted``: blobs the caller may cite besides those it possesses (see :func:`verify_blobs`).
    """
    entries = manifest_entries(files)
    repo = _repository(user=user, target=target, kind=kind, visibility=visibility, description=description,
                       entries=entries)
    _check_commit_fields(metadata=metadata, aliases=aliases)
    base_version = _base_for_push(user=user, repo=repo, base_model=base_model)
    possessed = {**blobs_possessed(user=user, sha256s={e.sha256 for e in entries}, job=job), **(granted or {})}
    return _commit(user=user, repo=repo, entries=entries, base_version=base_version, possessed=possessed,
                   message=message, metadata=metadata, aliases=aliases, job=job, head=head)


def _known_related(version: Version, *, files: list[VersionFile], aliases: list[Alias]) -> None:
    """Give a version just created the files and aliases it was created with, as if prefetched: the answer
    (``VersionSerializer``, the files with their URLs) then reads them back from nowhere."""
    version._prefetched_objects_cache = {"files": sorted(files, key=lambda f: f.path),
                                         "aliases": sorted({a.name: a for a in aliases}.values(), key=lambda a: a.name)}


def _commit(*, user, repo: Repository, entries: list[Entry], base_version: Version | None, possessed: dict[str, int],
            message: str = "", metadata: dict | None = None, aliases=(), job=None,
            head: Head | None = None) -> tuple[Version, bool]:
    """:func:`version_create` from its target's repository (:func:`_repository`), base version and the
    blobs ``user`` may cite among the entries' (possessed or granted), all resolved already."""
    verify_blobs(user=user, entries=entries, possessed=possessed)
    checks = acceptance.BlobChecks(blob_checks_found(e.sha256 for e in entries))
    inspected = _inspect(repo=repo, entries=entries, base_version=base_version, checks=checks)
    blob_checks_record(checks.fresh)
    entries = _store_rewrites(entries, inspected.rewrites)
    digest = manifest_digest(entries)

    with transaction.atomic():
        if repo.pk is None:
            # A new repository: inserted here with what its first version sets, so this transaction holds its
            # only row lock and knows it has no version yet.
            if job is not None and (earlier := Version.objects.filter(job=job).first()) is not None:
                return earlier, False
            repo.latest_number, repo.peft_type = 1, inspected.peft_type
            locked, latest = repository_insert(repo), None
        else:
            locked = Repository.objects.select_for_update().get(pk=repo.pk)
            locked.namespace = repo.namespace  # what the answer shows; a repository never changes namespace
            if locked.kind != repo.kind:  # decided by the first version's files; another push's first version won
                if locked.latest_number:
                    raise Conflict(f"`{repo.full_name}` became {with_article(locked.kind)} repository meanwhile; this "
                                   f"push is {with_article(repo.kind)}.", code="kind_mismatch")
                locked.kind = repo.kind
            if job is not None and (earlier := Version.objects.filter(job=job).first()) is not None:
                return earlier, False
            # with what an answer shows of it, should it be the answer (files identical to the latest version's)
            latest = (Version.objects.filter(repository=locked).select_related("created_by",
                                                                                "base_version__repository__namespace")
                      .order_by("-number").first())
            if latest is not None:
                latest.repository = locked
        if head is not None:
            head.check(locked, latest)
        if latest is not None and latest.digest == digest and job is None:
            version, created = latest, False
        else:
            number = latest.number + 1 if latest is not None else 1
            version = Version.objects.create(
                repository=locked, number=number, digest=digest, message=message or "", metadata=metadata or {},
                adapter_config=inspected.adapter_config, fingerprint=inspected.fingerprint, base_version=base_version,
                size=sum(e.size for e in entries), file_count=len(entries), created_by=user, job=job,
            )
            files = VersionFile.objects.bulk_create(
                [VersionFile(version=version, path=e.path, blob_id=e.sha256, size=e.size) for e in entries]
            )
            created = True
            if locked is not repo:
                locked.latest_number = number
                locked.peft_type = inspected.peft_type
                if repo.kind == Repository.Kind.ADAPTER and locked.base_model_id is None:
                    locked.base_model = repo.base_model
                locked.save(update_fields=["kind", "latest_number", "peft_type", "base_model", "updated_at"])
        moved = [alias_move(user=user, repo=locked, alias=alias, version=version) for alias in aliases]
    if created:
        # nothing else points at a version this transaction made
        _known_related(version, files=files, aliases=moved)
    return version, created
