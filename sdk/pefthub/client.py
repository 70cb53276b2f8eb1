"""The client: :class:`Hub`, one object for everything the REST API offers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tqdm.auto import tqdm

from . import _config, peft_compat
from . import constants as c
from ._checkpoints import CheckpointsMixin
from ._files import collect_files, infer_kind
from ._http import HTTPClient, quote_segment
from ._load import LoadMixin
from ._upload import hash_files, upload_missing
from .cache import Cache, check_manifest, check_sha256
from .compare import Comparison
from .errors import Conflict, HubConnectionError, HubError, IntegrityError, ValidationError
from .hf import HFMixin
from .jobs import JobsMixin
from .models import Repo, Version
from .protocol.manifest import manifest_digest
from .protocol.repos import KINDS
from .refs import Ref, check_alias, parse_ref

__all__ = ["Hub"]

if TYPE_CHECKING:  # only for annotations: no runtime dependency
    from typing_extensions import Self


class Hub(JobsMixin, CheckpointsMixin, LoadMixin, HFMixin):
    """A PEFT Hub client.

    Every argument falls back to the environment, then to the file written by
    ``pefthub login``: ``url`` to ``PEFTHUB_URL`` (default
    ``http://127.0.0.1:8000``), ``token`` to ``PEFTHUB_TOKEN``, ``cache_dir`` to
    ``PEFTHUB_CACHE`` (default ``~/.cache/pefthub``), ``progress`` to on unless
    ``PEFTHUB_DISABLE_PROGRESS_BARS=1``.

    Failed connections, 429s and 5xx are retried ``max_retries`` times with backoff. With
    ``retry_unreached=False`` a hub that refuses the client's very first connection raises
    :class:`~pefthub.errors.HubConnectionError` (code ``hub_unreachable``) at once instead:
    what a command run by hand wants; a long-lived client (a worker) keeps the default.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool | None = None,
        timeout: float = c.DEFAULT_TIMEOUT,
        max_retries: int = c.DEFAULT_MAX_RETRIES,
        retry_unreached: bool = True,
    ) -> None:
        config = _config.read_config()
        self.url = _config.resolve_url(url, config)
        self.token = _config.resolve_token(token, self.url, config)
        self.cache_dir = _config.resolve_cache_dir(cache_dir)
        self.progress = _config.resolve_progress(progress)
        self.cache = Cache(self.cache_dir)
        self._http = HTTPClient(self.url, self.token, timeout=timeout, max_retries=max_retries,
                                retry_unreached=retry_unreached)

    def __repr__(self) -> str:
        return f"Hub(url={self.url!r}, token={'***' if self.token else None})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """``/api/v1/{path}`` with the token, retries and typed errors; the decoded JSON, or None for no body.

        ``headers`` are sent unchanged on every retry (an ``Idempotency-Key`` must be).
        """
        method = method.upper()
        response = self._http.request(method, self._http.api_url(path), params=params, json=json, headers=headers,
                                      authenticated=True)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise HubError(
                f"{method} {path}: the server answered HTTP {response.status_code} with a body that is not JSON",
                status=response.status_code,
                request_id=response.headers.get("X-Request-ID"),
            ) from exc

    def _paginate(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Yield every item of a list endpoint, following ``next`` links.

        A plain JSON list is one page. Only the query of ``next`` is used: behind a
        proxy the server may not know the address the client reached it at.
        """
        query: dict[str, Any] = {k: v for k, v in (params or {}).items() if v is not None}
        seen: set[tuple[tuple[str, str], ...]] = set()
        while True:
            data = self.request("GET", path, params=query)
            if isinstance(data, list):
                yield from data
                return
            yield from (data or {}).get("results") or []
            nxt = (data or {}).get("next")
            if not nxt:
                return
            parsed = parse_qs(urlsplit(nxt).query, keep_blank_values=True)
            query = {k: v[-1] if len(v) == 1 else v for k, v in parsed.items()}
            key = tuple(sorted((k, str(v)) for k, v in query.items()))
            if key in seen:  # a server pointing back at a page already read
                return
            seen.add(key)

    @staticmethod
    def _repo_path(ref: Ref) -> str:
        return f"repos/{quote_segment(ref.namespace)}/{quote_segment(ref.name)}"

    def _bar(self, total: int, desc: str) -> Any:
        return tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not self.progress,
            leave=False,
        )

    # -- repositories ---------------------------------------------------------
    def repos(
        self,
        *,
        kind: str | None = None,
        namespace: str | None = None,
        base_model: str | None = None,
        peft_type: str | None = None,
        search: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Repo]:
        """Every repository you may read that matches the filters, page after page."""
        params = {
            "kind": kind,
            "namespace": namespace,
            "base_model": base_model,
            "peft_type": peft_type,
            "search": search,
            "page_size": page_size,
        }
        for item in self._paginate("repos", params):
            yield Repo.from_json(item)

    def repo(self, ref: str) -> Repo:
        r = parse_ref(ref, allow_revision=False)
        return Repo.from_json(self.request("GET", self._repo_path(r)))

    def create_repo(
        self,
        ref: str,
        *,
        kind: str,
        visibility: str = "private",
        base_model: str | None = None,
        description: str = "",
        exist_ok: bool = False,
    ) -> Repo:
        r = parse_ref(ref, allow_revision=False)
        body: dict[str, Any] = {
            "namespace": r.namespace,
            "name": r.name,
            "kind": kind,
            "visibility": visibility,
            "description": description,
        }
        if base_model:
            body["base_model"] = parse_ref(base_model).repo_id
        try:
            return Repo.from_json(self.request("POST", "repos", json=body))
        except Conflict:
            if not exist_ok:
                raise
            return self.repo(r.repo_id)

    def update_repo(
        self, ref: str, *, description: str | None = None, visibility: str | None = None
    ) -> Repo:
        r = parse_ref(ref, allow_revision=False)
        body = {k: v for k, v in (("description", description), ("visibility", visibility)) if v is not None}
        return Repo.from_json(self.request("PATCH", self._repo_path(r), json=body))

    def delete_repo(self, ref: str) -> None:
        r = parse_ref(ref, allow_revision=False)
        self.request("DELETE", self._repo_path(r))

    # -- versions and aliases -------------------------------------------------
    def versions(self, ref: str) -> Iterator[Version]:
        """Every version of a repository (without files), newest as the server orders."""
        r = parse_ref(ref, allow_revision=False)
        for item in self._paginate(f"{self._repo_path(r)}/versions"):
            yield Version.from_json(item)

    def version(self, ref: str) -> Version:
        """One version with its files; the revision defaults to ``latest``."""
        return self._version(parse_ref(ref))

    def _version(self, r: Ref) -> Version:
        path = f"{self._repo_path(r)}/versions/{quote_segment(r.revision)}"
        return Version.from_json(self.request("GET", path))

    def compare(self, a: str, b: str) -> Comparison:
        """Two versions' metrics side by side (two requests): training metrics, and evaluations matched by dataset.

        ``print(hub.compare("acme/bot@3", "acme/bot@4"))`` prints a table; ``.rows`` holds each
        :class:`~pefthub.compare.MetricRow` (``group``, ``metric``, ``a``, ``b``, ``delta`` = b - a).
        """
        return Comparison.of(self.version(a), self.version(b))

    def aliases(self, ref: str) -> list[dict[str, Any]]:
        r = parse_ref(ref, allow_revision=False)
        return list(self._paginate(f"{self._repo_path(r)}/aliases"))

    def set_alias(self, ref: str, alias: str) -> dict[str, Any]:
        """Point ``alias`` at the version ``ref`` names: ``set_alias("acme/bot@3", "prod")``."""
        r = parse_ref(ref)
        check_alias(alias)
        version: int | str = int(r.revision) if r.is_number else r.revision
        path = f"{self._repo_path(r)}/aliases/{quote_segment(alias)}"
        return self.request("PUT", path, json={"version": version})

    def delete_alias(self, ref: str, alias: str) -> None:
        r = parse_ref(ref, allow_revision=False)
        check_alias(alias)
        self.request("DELETE", f"{self._repo_path(r)}/aliases/{quote_segment(alias)}")

    # -- push -----------------------------------------------------------------
    def push(
        self,
        path: str | os.PathLike[str],
        ref: str,
        *,
        base_model: str | None = None,
        kind: str | None = None,
        aliases: Iterable[str] | str = (),
        message: str = "",
        metadata: Mapping[str, Any] | None = None,
        visibility: str = "private",
        create: bool = True,
        job: str | None = None,
    ) -> Version:
        """Upload a folder (or one file) as a new version of ``ref``.

        Only blobs you cannot already read on the hub are sent (knowing a hash is not
        access: a blob counts as there only if a version you can read holds it). Pushing
        files identical to the latest version creates nothing and returns it with
        ``created == False``. With ``create`` a missing repository is created by the
        commit, with its first version (``kind``, ``visibility``): a refused push leaves
        nothing behind; an existing one must be of ``kind``. The negotiation carries the
        commit: when the hub holds every blob for you it commits at once (one request);
        otherwise upload what is missing, then commit (two requests and the uploads).
        ``job`` (workers only, with that job's token) marks the version as its result.
        """
        r = parse_ref(ref, allow_revision=False)
        alias_list = [check_alias(a) for a in ([aliases] if isinstance(aliases, str) else aliases)]
        base = parse_ref(base_model) if base_model else None
        local = collect_files(path)
        if not local:
            raise ValidationError(
                f"{os.fspath(path)}: nothing to push (no regular files outside hidden folders)"
            )
        kind = kind or infer_kind(f.path for f in local)
        if kind not in KINDS:
            raise ValidationError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")

        with self._bar(sum(f.size for f in local), "hashing") as bar:
            manifest, by_sha = hash_files(local, bar.update)

        repo_path = self._repo_path(r)
        # With `kind`, the hub creates a missing repository with the first version.
        repo_fields: dict[str, Any] = {"kind": kind, "visibility": visibility} if create else {}
        if base is not None:
            repo_fields["base_model"] = str(base)
        commit: dict[str, Any] = {"message": message, "metadata": dict(metadata or {}), "aliases": alias_list}
        if job is not None:
            commit["job"] = job
        plan = self.request("POST", f"{repo_path}/uploads", json={"files": manifest, **repo_fields, "commit": commit})
        if (plan or {}).get("version") is not None:
            return Version.from_json(plan["version"])

        upload_missing(self._http, plan, by_sha, what="push", bar=self._bar)
        body = {"files": manifest, **commit, **repo_fields}
        return Version.from_json(self.request("POST", f"{repo_path}/versions", json=body))

    # -- pull -----------------------------------------------------------------
    def pull(self, ref: str, *, local_dir: str | os.PathLike[str] | None = None, peft_version: str | None = None) -> Path:
        """Download a version into the cache (verified) and return its folder.

        A digest-pinned ref whose snapshot is cached needs no request at all; any
        other ref costs one API request, plus the blobs the cache lacks.
        With ``peft_version`` (``"0.13"``) the folder's ``adapter_config.json`` holds
        only keys that peft release knows, and a :class:`~pefthub.peft_compat.PeftCompatWarning`
        names the ones dropped; the cached blobs stay as pushed.
        """
        r = parse_ref(ref)
        if peft_version is not None:
            peft_compat.resolve_version(peft_version)
        if r.is_digest and self.cache.is_complete(r.digest_hex or ""):
            return self._deliver(r.digest_hex or "", local_dir, peft_version, str(r))
        try:
            version = self._version(r)
        except HubConnectionError:
            cached = self.cache.read_ref(r)
            if cached and self.cache.is_complete(cached):
                warnings.warn(
                    f"{self.url} is unreachable; using the cached snapshot of {r}", stacklevel=2
                )
                return self._deliver(cached, local_dir, peft_version, str(r))
            raise

        files = check_manifest(version.files or ())
        digest_hex = check_sha256(version.digest_hex)
        if manifest_digest(files) != digest_hex:
            raise IntegrityError(
                f"the manifest of {version.ref} does not hash to its digest {version.digest}",
                code="digest_mismatch",
            )
        if r.is_digest and r.digest_hex != digest_hex:
            raise IntegrityError(f"asked for {r} but the server answered {version.digest}")

        if not self.cache.is_complete(digest_hex):
            unique = {f.sha256: f for f in files}
            todo = [f for f in unique.values() if not self.cache.has_blob(f)]
            # Largest first and a few at a time: small files no longer hold up the weights.
            todo.sort(key=lambda f: -f.size)
            with self._bar(sum(f.size for f in todo), f"pulling {version.ref}") as bar, \
                    ThreadPoolExecutor(max_workers=max(1, min(4, len(todo))), thread_name_prefix="pefthub-pull") as pool:
                for _ in pool.map(lambda entry: self.cache.download(self._http, entry, on_bytes=bar.update), todo):
                    pass
            self.cache.build_snapshot(digest_hex, files)
        self.cache.write_ref(r, digest_hex)
        if r.revision != str(version.number):
            self.cache.write_ref(r.at(version.number), digest_hex)
        return self._deliver(digest_hex, local_dir, peft_version, version.ref)

    def _deliver(
        self, digest_hex: str, local_dir: str | os.PathLike[str] | None, peft_version: str | None, label: str
    ) -> Path:
        if peft_version is not None:
            return peft_compat.deliver(self.cache, digest_hex, local_dir, peft_version, label)
        snapshot = self.cache.snapshot_dir(digest_hex)
        if local_dir is None:
            return snapshot
        return self.cache.export(digest_hex, Path(local_dir))

    # -- account, teams, tokens -----------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "whoami")

    def teams(self) -> list[dict[str, Any]]:
        return list(self._paginate("teams"))

    def create_team(self, name: str) -> dict[str, Any]:
        return self.request("POST", "teams", json={"name": name})

    def team(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"teams/{quote_segment(name)}")

    def add_member(self, team: str, username: str, role: str = "read") -> dict[str, Any]:
        return self.request(
            "POST", f"teams/{quote_segment(team)}/members", json={"username": username, "role": role}
        )

    def set_member_role(self, team: str, username: str, role: str) -> dict[str, Any]:
        path = f"teams/{quote_segment(team)}/members/{quote_segment(username)}"
        return self.request("PATCH", path, json={"role": role})

    def remove_member(self, team: str, username: str) -> None:
        self.request("DELETE", f"teams/{quote_segment(team)}/members/{quote_segment(username)}")

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._paginate("tokens"))

    def create_token(
        self, name: str, *, scope: str = "read", expires_in_days: int | None = None
    ) -> dict[str, Any]:
        """A new token; the secret is in ``["token"]`` and shown this once."""
        body: dict[str, Any] = {"name": name, "scope": scope}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self.request("POST", "tokens", json=body)

    def revoke_token(self, token_id: int | str) -> None:
        self.request("DELETE", f"tokens/{quote_segment(token_id)}")

