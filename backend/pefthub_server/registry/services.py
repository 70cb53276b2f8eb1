"""Writes to the registry: repositories, pushes (negotiate, commit), aliases.

Each function is keyword-only and does one state change; the invariants that must
hold under concurrency (version numbers, alias moves) are enforced in the database.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from pefthub_server.core.errors import Conflict, NotFound, ValidationFailed
from pefthub_server.registry import validation
from pefthub_server.registry.models import (
    Alias,
    AliasMove,
    Blob,
    Membership,
    Namespace,
    Repository,
    Role,
    Version,
    VersionFile,
)
from pefthub_server.registry.refs import (
    LATEST,
    NAME_RE,
    SHA256_RE,
    check_alias_name,
    parse_ref,
)
from pefthub_server.registry.selectors import (
    repository_get,
    require_namespace_role,
    version_resolve,
)
from pefthub_server.registry.storage import get_blob_store
from pefthub_server.registry.teams import user_namespace_ensure

MAX_FILES = 10_000
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# --- repositories -------------------------------------------------------------------


def _resolve_base(*, user, ref: str) -> tuple[Repository, Version | None]:
    parsed = parse_ref(ref, field="base_model")
    base = repository_get(user=user, namespace=parsed.namespace, name=parsed.name)
    if base.kind != Repository.Kind.MODEL:
        raise ValidationFailed(f"base_model `{base.full_name}` is a {base.kind} repository, not a model.")
    version = version_resolve(repo=base, revision=parsed.revision) if base.latest_number else None
    return base, version


def repository_create(
    *, user, namespace: str | None = None, name: str, kind: str, visibility: str = Repository.Visibility.PRIVATE,
    description: str = "", base_model: str | None = None,
) -> Repository:
    if not NAME_RE.match(name or ""):
        raise ValidationFailed(
            f"Repository name {name!r} is invalid: use letters, digits, `.`, `_`, `-` (at most 96, starting with a letter or digit)."
        )
    if kind not in Repository.Kind.values:
        raise ValidationFailed(f"kind {kind!r} is invalid; use one of {', '.join(Repository.Kind.values)}.")
    if visibility not in Repository.Visibility.values:
        raise ValidationFailed(f"visibility {visibility!r} is invalid; use one of {', '.join(Repository.Visibility.values)}.")
    ns = Namespace.objects.filter(name=namespace).first() if namespace else user_namespace_ensure(user=user)
    if ns is None:
        raise NotFound(f"Namespace `{namespace}` not found.")
    if ns.user_id != user.id:
        if not Membership.objects.filter(namespace=ns, user=user).exists():
            raise NotFound(f"Namespace `{namespace}` not found (or you are not a member).")
        require_namespace_role(user, ns, Role.WRITE, action=f"create repositories in `{ns.name}`")
    base = None
    if kind == Repository.Kind.ADAPTER:
        if not base_model:
            raise ValidationFailed(
                "An adapter repository needs a base model: pass base_model=`namespace/name` of a model repository.",
                code="base_model_required",
            )
        base, _ = _resolve_base(user=user, ref=base_model)
    elif base_model:
        raise ValidationFailed(f"Only adapter repositories name a base model; this one is a {kind}.")
    try:
        with transaction.atomic():
            return Repository.objects.create(
                namespace=ns, name=name, kind=kind, visibility=visibility, description=description or "",
                base_model=base, created_by=user,
            )
    except IntegrityError:
        raise Conflict(f"Repository `{ns.name}/{name}` already exists.") from None


def repository_update(*, user, repo: Repository, description: str | None = None, visibility: str | None = None) -> Repository:
    fields = []
    if description is not None:
        repo.description = description
        fields.append("description")
    if visibility is not None and visibility != repo.visibility:
        if visibility not in Repository.Visibility.values:
            raise ValidationFailed(f"visibility {visibility!r} is invalid; use one of {', '.join(Repository.Visibility.values)}.")
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


# --- push: negotiate, commit ---------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    path: str
    sha256: str
    size: int


def _file_specs(files) -> list[FileSpec]:
    if not isinstance(files, list) or not files:
        raise ValidationFailed("`files` must be a non-empty list of {path, sha256, size}.")
    if len(files) > MAX_FILES:
        raise ValidationFailed(f"A version holds at most {MAX_FILES} files; this push has {len(files)}.")
    specs, seen = [], set()
    for i, item in enumerate(files):
        if not isinstance(item, dict):
            raise ValidationFailed(f"files[{i}] must be an object {{path, sha256, size}}.")
        path, sha, size = item.get("path"), item.get("sha256"), item.get("size")
        if not isinstance(path, str):
            raise ValidationFailed(f"files[{i}].path must be a string.", code="invalid_path")
        validation.check_path(path)
        validation.check_file_type(path)
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise ValidationFailed(f"files[{i}].sha256 for `{path}` must be 64 lowercase hex characters.")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValidationFailed(f"files[{i}].size for `{path}` must be a non-negative integer.")
        if size > settings.PEFTHUB_MAX_FILE_SIZE:
            raise ValidationFailed(
                f"`{path}` is {size} bytes; the limit is {settings.PEFTHUB_MAX_FILE_SIZE} (PEFTHUB_MAX_FILE_SIZE).",
                code="too_large", status=413,
            )
        if path in seen:
            raise ValidationFailed(f"`{path}` is listed twice.", code="invalid_path")
        seen.add(path)
        specs.append(FileSpec(path, sha, size))
    return specs


def upload_negotiate(*, repo: Repository, files, base_url: str) -> dict:
    """Which blobs the client must upload, and where. Bad paths and file types fail here, before any byte moves."""
    specs = _file_specs(files)
    sizes = {}
    for spec in specs:
        if sizes.setdefault(spec.sha256, spec.size) != spec.size:
            raise ValidationFailed(f"Blob {spec.sha256} is declared with two sizes.", code="size_mismatch")
    present = dict(Blob.objects.filter(sha256__in=sizes).values_list("sha256", "size"))
    store = get_blob_store()
    missing = []
    for sha, size in sizes.items():
        if sha in present and present[sha] == size:
            continue
        missing.append({"sha256": sha, "size": size, "upload": store.upload_target(sha, size, base_url=base_url)})
    return {"missing": missing, "present": sorted(present)}


def blob_register(*, sha256: str, size: int) -> Blob:
    blob, _ = Blob.objects.get_or_create(sha256=sha256, defaults={"size": size})
    return blob


def _verify_blobs(specs: list[FileSpec]) -> None:
    known = dict(Blob.objects.filter(sha256__in={s.sha256 for s in specs}).values_list("sha256", "size"))
    store = get_blob_store()
    for spec in specs:
        if spec.sha256 in known:
            if known[spec.sha256] != spec.size:
                raise ValidationFailed(
                    f"`{spec.path}` is declared as {spec.size} bytes but blob {spec.sha256} has {known[spec.sha256]}.",
                    code="size_mismatch",
                )
            continue
        try:
            store.verify(spec.sha256, spec.size)
        except ValidationFailed as exc:
            exc.message = f"`{spec.path}`: {exc.message}"
            raise
        blob_register(sha256=spec.sha256, size=spec.size)
        known[spec.sha256] = spec.size


def canonical_digest(specs: list[FileSpec]) -> str:
    manifest = [{"path": s.path, "sha256": s.sha256, "size": s.size} for s in sorted(specs, key=lambda s: s.path)]
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class _Inspection:
    specs: list[FileSpec]
    adapter_config: dict | None = None
    fingerprint: dict | None = None
    peft_type: str = ""


_PREFIX = 64 * 1024


def _prefix_reader(store, spec: FileSpec):
    """The file's first 64 KiB (one ranged GET on S3) and a reader that serves from it when it can.

    The magic-byte check and most safetensors headers then cost one request per file.
    """
    head = store.read_range(spec.sha256, 0, min(spec.size, _PREFIX))

    def read_range(start: int, length: int) -> bytes:
        if start + length <= len(head):
            return head[start : start + length]
        return store.read_range(spec.sha256, start, length)

    return head, read_range


def _read_json(store, spec: FileSpec) -> dict:
    if spec.size > 64 * 1024 * 1024:
        raise ValidationFailed(f"`{spec.path}` is too large for a config file ({spec.size} bytes).", code="invalid_json")
    return validation.parse_json(spec.path, store.read_range(spec.sha256, 0, spec.size))


def _inspect(*, repo: Repository, specs: list[FileSpec], base_version: Version | None) -> _Inspection:
    """Validate every file's content; compute what the version records about itself."""
    store = get_blob_store()
    by_path = {s.path: s for s in specs}
    headers: dict[str, dict] = {}
    for spec in specs:
        category = validation.check_file_type(spec.path)
        head, read_range = _prefix_reader(store, spec)
        validation.check_magic(spec.path, head[:16])
        if category == "safetensors":
            headers[spec.path] = validation.parse_safetensors_header(spec.path, spec.size, read_range)
    result = _Inspection(specs=list(specs))
    if repo.kind == Repository.Kind.MODEL:
        if "config.json" not in by_path or not headers:
            raise ValidationFailed(
                "A model version needs `config.json` and its weights as `*.safetensors` at the top level.",
                code="validation_error",
            )
        tensors = {name: info for header in headers.values() for name, info in header.items()}
        result.fingerprint = validation.compute_fingerprint(_read_json(store, by_path["config.json"]), tensors)
    elif repo.kind == Repository.Kind.ADAPTER:
        config_spec = by_path.get(ADAPTER_CONFIG)
        if config_spec is None:
            raise ValidationFailed(
                f"An adapter version needs `{ADAPTER_CONFIG}` at the top level (what peft's save_pretrained writes).",
                code="invalid_adapter_config",
            )
        raw = store.read_range(config_spec.sha256, 0, config_spec.size)
        adapter = validation.parse_adapter_config(raw)
        assert base_version is not None
        base_label = f"{base_version.repository.full_name}@{base_version.number}"
        weights = headers.get(ADAPTER_WEIGHTS)
        if weights is None:
            raise ValidationFailed(
                f"An adapter version needs `{ADAPTER_WEIGHTS}` (peft's save_pretrained with safe_serialization).",
                code="invalid_adapter_config",
            )
        validation.check_adapter_against_base(adapter, weights, base_version.fingerprint or {}, base_label=base_label)
        # The stored config names the base by its hub reference, never a path on the pusher's machine.
        config = validation.parse_json(ADAPTER_CONFIG, raw)
        if config.get("base_model_name_or_path") != repo.base_model.full_name:
            config["base_model_name_or_path"] = repo.base_model.full_name
            data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
            sha = hashlib.sha256(data).hexdigest()
            store.save_bytes(sha, data)
            blob_register(sha256=sha, size=len(data))
            result.specs = [s if s.path != ADAPTER_CONFIG else FileSpec(ADAPTER_CONFIG, sha, len(data)) for s in specs]
            adapter["base_model_name_or_path"] = repo.base_model.full_name
        result.adapter_config = adapter
        result.peft_type = adapter.get("peft_type") or ""
    return result


def version_create(
    *, user, repo: Repository, files, message: str = "", base_model: str | None = None,
    metadata: dict | None = None, aliases: list[str] | tuple[str, ...] = (), job=None,
) -> tuple[Version, bool]:
    """Commit a version from verified blobs. Returns (version, created).

    Identical to the latest version -> (latest, False). With ``job`` (a running Job), the
    job's first result is returned for every later commit: one result version per job.
    """
    specs = _file_specs(files)
    if metadata is not None and not isinstance(metadata, dict):
        raise ValidationFailed("metadata must be a JSON object.")
    for alias in aliases:
        check_alias_name(alias)
        if alias == LATEST:
            raise ValidationFailed("`latest` always names the newest version; it cannot be set.")
    base_version = None
    if repo.kind == Repository.Kind.ADAPTER:
        base_ref = base_model or (repo.base_model.full_name if repo.base_model else None)
        if not base_ref:
            raise ValidationFailed("Pushing an adapter needs base_model=`namespace/name`.", code="base_model_required")
        base, base_version = _resolve_base(user=user, ref=base_ref)
        if repo.base_model_id and base.pk != repo.base_model_id:
            raise ValidationFailed(
                f"`{repo.full_name}` is filed against base `{repo.base_model.full_name}`, not `{base.full_name}`.",
                code="validation_error",
            )
        if base_version is None:
            raise ValidationFailed(f"Base model `{base.full_name}` has no version yet; push the base first.")
        repo.base_model = base
    elif base_model:
        raise ValidationFailed(f"Only adapters name a base model; `{repo.full_name}` is a {repo.kind}.")

    _verify_blobs(specs)
    inspected = _inspect(repo=repo, specs=specs, base_version=base_version)
    specs = inspected.specs
    digest = canonical_digest(specs)

    with transaction.atomic():
        locked = Repository.objects.select_for_update().get(pk=repo.pk)
        if job is not None and (earlier := Version.objects.filter(job=job).first()) is not None:
            return earlier, False
        latest = Version.objects.filter(repository=locked).order_by("-number").first()
        if latest is not None and latest.digest == digest and not aliases and job is None:
            return latest, False
        if latest is not None and latest.digest == digest and job is None:
            version, created = latest, False
        else:
            number = (Version.objects.filter(repository=locked).aggregate(m=Max("number"))["m"] or 0) + 1
            version = Version.objects.create(
                repository=locked, number=number, digest=digest, message=message or "", metadata=metadata or {},
                adapter_config=inspected.adapter_config, fingerprint=inspected.fingerprint, base_version=base_version,
                size=sum(s.size for s in specs), file_count=len(specs), created_by=user, job=job,
            )
            VersionFile.objects.bulk_create(
                [VersionFile(version=version, path=s.path, blob_id=s.sha256, size=s.size) for s in specs]
            )
            created = True
            locked.latest_number = number
            locked.peft_type = inspected.peft_type
            if repo.kind == Repository.Kind.ADAPTER and locked.base_model_id is None:
                locked.base_model = repo.base_model
            locked.save(update_fields=["latest_number", "peft_type", "base_model", "updated_at"])
        for alias in aliases:
            _alias_move(user=user, repo=locked, alias=alias, version=version)
    return version, created


# --- aliases --------------------------------------------------------------------------


def _alias_move(*, user, repo: Repository, alias: str, version: Version) -> Alias:
    current = Alias.objects.select_for_update().filter(repository=repo, name=alias).select_related("version").first()
    if current is not None and current.version_id == version.pk:
        return current
    AliasMove.objects.create(
        repository=repo, alias=alias, from_number=current.version.number if current else None,
        to_number=version.number, moved_by=user,
    )
    if current is None:
        return Alias.objects.create(repository=repo, name=alias, version=version, updated_by=user)
    current.version = version
    current.updated_by = user
    current.save(update_fields=["version", "updated_by", "updated_at"])
    return current


def alias_set(*, user, repo: Repository, alias: str, revision: str) -> Alias:
    check_alias_name(alias)
    if alias == LATEST:
        raise ValidationFailed("`latest` always names the newest version; it cannot be moved.")
    version = version_resolve(repo=repo, revision=str(revision))
    with transaction.atomic():
        return _alias_move(user=user, repo=repo, alias=alias, version=version)


def alias_delete(*, user, repo: Repository, alias: str) -> None:
    if alias == LATEST:
        raise ValidationFailed("`latest` always names the newest version; it cannot be deleted.")
    with transaction.atomic():
        current = Alias.objects.select_for_update().filter(repository=repo, name=alias).select_related("version").first()
        if current is None:
            raise NotFound(f"`{repo.full_name}` has no alias `{alias}`.")
        AliasMove.objects.create(
            repository=repo, alias=alias, from_number=current.version.number, to_number=None, moved_by=user
        )
        current.delete()


# --- garbage collection ----------------------------------------------------------------


def blobs_collect(*, older_than: timedelta, dry_run: bool = False) -> dict:
    """Delete blobs no version uses (uploads never committed, pre-rewrite adapter configs).

    Only blobs older than ``older_than`` go, so a push between its negotiation and its
    commit keeps what it relies on; if one still loses a blob, its commit answers
    `missing_blob` and the SDK's next push uploads it again.
    """
    cutoff = timezone.now() - older_than
    orphans = list(Blob.objects.filter(created_at__lt=cutoff, version_files__isnull=True).values_list("sha256", "size"))
    freed = sum(size for _, size in orphans)
    if not dry_run:
        store = get_blob_store()
        for sha256, _ in orphans:
            with transaction.atomic():
                # Lock the row, then re-check: a commit may have just started using it (its
                # VersionFile insert needs this row, so it waits for us or we see it).
                locked = Blob.objects.select_for_update().filter(sha256=sha256).first()
                if locked is None or VersionFile.objects.filter(blob_id=sha256).exists():
                    continue
                store.delete(sha256)
                Blob.objects.filter(sha256=sha256).delete()
    return {"blobs": len(orphans), "bytes": freed, "dry_run": dry_run}
