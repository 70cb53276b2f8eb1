"""A Hugging Face Hub-compatible read API under ``/hf/``.

With ``HF_ENDPOINT=http://hub:8000/hf HF_TOKEN=<hub token>``, huggingface_hub (and so
peft, transformers, vLLM, TGI) fetch ``namespace/name`` from the hub unchanged: repo
info, file trees, and ``resolve`` downloads (bytes from the local store, or a 302 to a
presigned S3 URL). Revisions: ``main`` (the latest version), an alias, a version number,
or the 40-hex commit id (the first 40 hex digits of the version digest, stable forever).
Errors carry ``X-Error-Code`` as the Hub's do; private repos are ``RepoNotFound`` to
outsiders, and names or revisions outside the hub's grammar are ``RepoNotFound`` or
``RevisionNotFound`` with the reason. No Xet fields are ever sent (clients would switch
protocols and fail).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpResponseRedirect, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from rest_framework.exceptions import Throttled

from pefthub.protocol import peft_compat
from pefthub.protocol.errors import ProtocolError
from pefthub.protocol.manifest import ADAPTER_CONFIG, MODEL_CARD
from pefthub.protocol.refs import HF_MAIN, HF_VARIANT_PREFIX, hf_commit, is_hf_commit
from pefthub_server.core.auth import JOB_TOKEN_REFUSED, TokenAuthentication
from pefthub_server.core.errors import AuthenticationFailed, HubError, NotFound
from pefthub_server.core.http import base_url, bytes_response
from pefthub_server.registry import lineage
from pefthub_server.registry.card import MAX_README, Card, card_data, readme_bytes, render_card
from pefthub_server.registry.models import Repository, Version, VersionFile
from pefthub_server.registry.selectors import readable_names, repository_get, version_by_digest_prefix, version_resolve
from pefthub_server.registry.storage import get_blob_store

KINDS = {"models": (Repository.Kind.ADAPTER, Repository.Kind.MODEL), "datasets": (Repository.Kind.DATASET,)}


class HfError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(exc: HfError) -> JsonResponse:
    response = JsonResponse({"error": exc.message}, status=exc.status)
    if exc.code:
        response["X-Error-Code"] = exc.code
    response["X-Error-Message"] = exc.message
    return response


def hf_view(view):
    """Authenticate like HF_TOKEN does and render errors as the Hub does."""

    def wrapped(request, *args, **kwargs):
        try:
            auth = TokenAuthentication().authenticate(request)
        except AuthenticationFailed as exc:
            return _error(HfError(401, None, exc.message))
        except Throttled as exc:  # too many failed authentications (core.throttling)
            response = _error(HfError(429, None, str(exc.detail)))
            response["Retry-After"] = str(exc.wait)
            return response
        if auth is not None and auth[1].is_job_token:  # workers pull through /api/v1, by pinned version
            return _error(HfError(403, None, JOB_TOKEN_REFUSED))
        if auth is not None:
            request.user, request.auth = auth
        try:
            return view(request, *args, **kwargs)
        except HfError as exc:
            return _error(exc)
        except HubError as exc:  # a range outside the file (416), ...
            return _error(HfError(exc.status, None, exc.message))

    wrapped.__name__ = view.__name__
    return csrf_exempt(wrapped)  # a token API: no cookie to protect, so a POST gets 405, not a CSRF page


@dataclass
class Entry:
    path: str
    sha256: str
    size: int
    generated: bytes | None = None  # the model card, or an adapter config adjusted for an older peft
    dropped: list[str] | None = None


def _repo(request, repo_type: str, ns: str, name: str) -> Repository:
    try:
        return repository_get(user=request.user, namespace=ns, name=name, kinds=KINDS[repo_type])
    except (NotFound, ProtocolError) as exc:
        why = f" ({exc.message})" if isinstance(exc, ProtocolError) else ""
        raise HfError(404, "RepoNotFound", f"Repository Not Found for url: {request.path}{why}. Make sure your token "
                      f"can read `{ns}/{name}` (HF_TOKEN must be a PEFT Hub token).") from None


COMPAT_RE = re.compile(r"^(?P<rev>.+)\+peft-(?P<peft>[0-9][0-9A-Za-z.]*)$")


def _variant(peft: str) -> str:
    return f"peft-{peft}"


@dataclass
class Resolved:
    """A version as the HF view shows it; ``peft`` set when its adapter config is adjusted for an older peft."""

    version: Version
    peft: str | None = None

    @property
    def commit(self) -> str:
        # An adjusted config gets a commit of its own, so HF caches never mix it with the original.
        return hf_commit(self.version.digest, None if self.peft is None else _variant(self.peft))


def _resolve(repo: Repository, revision: str) -> Resolved:
    """``main``, an alias, a number or a 40-hex commit; ``<rev>+peft-0.13`` adjusts the adapter config for peft 0.13."""
    match = COMPAT_RE.match(revision)
    if match is None:
        try:
            return Resolved(_version(repo, revision))
        except HfError:
            if is_hf_commit(revision) and (resolved := _variant_commit(repo, revision)) is not None:
                return resolved
            raise
    try:
        peft = peft_compat.resolve_version(match["peft"])
    except ValueError as exc:
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: {revision}: {exc}") from None
    return Resolved(_version(repo, match["rev"]), peft if repo.kind == Repository.Kind.ADAPTER else None)


def _empty(repo: Repository, revision: str) -> bool:
    """`main` of a repository `create_repo` made and nothing was pushed to yet: no files, not a missing revision.

    (transformers' push_to_hub reads the card first, and only EntryNotFound means "none yet".)
    """
    return revision == HF_MAIN and not repo.latest_number


def _variant_commit(repo: Repository, commit: str) -> Resolved | None:
    """The version and peft release whose adjusted-config commit is ``commit``: one indexed lookup, then the table."""
    version = version_by_digest_prefix(repo=repo, prefix=commit[:HF_VARIANT_PREFIX])
    if version is None:
        return None
    peft = next((p for p in peft_compat.tabled_versions() if hf_commit(version.digest, _variant(p)) == commit), None)
    return None if peft is None else Resolved(version, peft)


def _version(repo: Repository, revision: str) -> Version:
    try:
        return version_resolve(repo=repo, revision=revision, hf=True)
    except (NotFound, ProtocolError) as exc:
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: {revision} for `{repo.full_name}`: {exc}") from None


def _generated(path: str, data: bytes) -> Entry:
    return Entry(path, hashlib.sha256(data).hexdigest(), len(data), generated=data)


def _files(request, resolved: Resolved) -> tuple[list[Entry], Card | None]:
    """The files of the version as the HF view shows them, and its card (None: a pushed README too long to merge into)."""
    version = resolved.version
    files = [Entry(f.path, f.blob_id, f.size) for f in VersionFile.objects.filter(version=version).order_by("path")]
    if resolved.peft is not None:
        files = [_compat_config(e, resolved.peft) if e.path == ADAPTER_CONFIG else e for e in files]
    pushed = next((e for e in files if e.path == MODEL_CARD), None)
    if pushed is not None and pushed.size > MAX_README:
        return files, None
    card = render_card(version, hub_url=base_url(request), readable=_lineage_readable(request, version),
                       readme=None if pushed is None else readme_bytes(pushed.sha256, pushed.size))
    files = [e for e in files if e.path != MODEL_CARD] + [_generated(MODEL_CARD, card.text)]
    return sorted(files, key=lambda e: e.path), card


def _lineage_readable(request, version) -> set[str]:
    """Which repositories named by the version's lineage the caller may read (no query when it names none)."""
    return readable_names(request.user, lineage.named(version.metadata))


def _entries(request, resolved: Resolved) -> list[Entry]:
    return _files(request, resolved)[0]


def _compat_config(entry: Entry, peft: str) -> Entry:
    adjusted = peft_compat.adjust_config(get_blob_store().read_range(entry.sha256, 0, entry.size), peft)
    if adjusted is None:
        return entry
    item = _generated(entry.path, adjusted.data)
    item.dropped = adjusted.dropped
    return item


def repo_tags(data: dict) -> list[str]:
    """A repository's tags as the Hub lists them: its card's, then `base_model:<base>` and `base_model:<relation>:<base>`.

    ``data`` may hold a user's own `base_model` (a name or a list) where the hub knows none.
    """
    tags = [str(t) for t in data.get("tags", [])]
    bases = data.get("base_model")
    relation = data.get("base_model_relation")
    for base in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []:
        if isinstance(base, str):
            tags += [f"base_model:{base}", *([f"base_model:{relation}:{base}"] if isinstance(relation, str) else [])]
    return list(dict.fromkeys(tags))


def _info(request, repo: Repository, resolved: Resolved) -> dict:
    version = resolved.version
    files, card = _files(request, resolved)
    data = card.data if card is not None else card_data(version, readable=_lineage_readable(request, version))
    siblings = [{"rfilename": e.path} for e in files]
    if request.GET.get("blobs", "").lower() in ("1", "true"):  # model_info(..., files_metadata=True)
        siblings = [{"rfilename": e.path, "size": e.size, "blobId": e.sha256[:40], **_lfs(e, key="sha256")} for e in files]
    return {
        **repo_summary(repo, version, data, commit=resolved.commit),
        "cardData": data, "siblings": siblings, "usedStorage": version.size,
    }


def repo_summary(repo: Repository, version: Version | None, data: dict, *, commit: str | None) -> dict:
    """What the Hub says of a repository in its info and in its listings (``version``: its newest, None if it has none)."""
    stamp = (version.created_at if version is not None else repo.created_at).isoformat().replace("+00:00", "Z")
    item = {
        "_id": f"{repo.pk:024x}", "id": repo.full_name, "author": repo.namespace.name, "sha": commit,
        "lastModified": stamp, "createdAt": repo.created_at.isoformat().replace("+00:00", "Z"),
        "private": repo.visibility != Repository.Visibility.PUBLIC, "disabled": False, "gated": False,
        "downloads": 0, "likes": 0, "tags": repo_tags(data),
    }
    if repo.kind != Repository.Kind.DATASET:
        item |= {"modelId": repo.full_name, "library_name": data.get("library_name"), "pipeline_tag": "text-generation"}
    return item


@require_http_methods(["GET", "HEAD"])
@hf_view
def repo_info(request, repo_type, ns, name, rev="main"):
    repo = _repo(request, repo_type, ns, name)
    if _empty(repo, rev):
        return JsonResponse({**repo_summary(repo, None, {}, commit=None), "cardData": {}, "siblings": [], "usedStorage": 0})
    return JsonResponse(_info(request, repo, _resolve(repo, rev)))


def _lfs(entry: Entry, *, key: str = "oid") -> dict:
    """Weights are listed as Git LFS files, as on the Hub: their sha256 (as ``oid`` in trees, ``sha256`` in siblings)."""
    if not entry.path.endswith(".safetensors"):
        return {}
    return {"lfs": {key: entry.sha256, "size": entry.size, "pointerSize": 134}}


def _tree_item(entry: Entry) -> dict:
    return {"type": "file", "oid": entry.sha256[:40], "size": entry.size, "path": entry.path, **_lfs(entry)}


@require_http_methods(["GET", "HEAD"])
@hf_view
def tree(request, repo_type, ns, name, rev, path=""):
    repo = _repo(request, repo_type, ns, name)
    prefix = path.strip("/")
    if _empty(repo, rev):
        if prefix:
            raise HfError(404, "EntryNotFound", f"`{prefix}` does not exist in `{repo.full_name}`: it has no version yet.")
        return JsonResponse([], safe=False)
    resolved = _resolve(repo, rev)
    recursive = request.GET.get("recursive", "").lower() in ("1", "true")
    items: dict[str, dict] = {}
    for entry in _entries(request, resolved):
        if prefix and not entry.path.startswith(prefix + "/"):
            continue
        rest = entry.path[len(prefix) + 1 :] if prefix else entry.path
        parts = rest.split("/")
        for depth in range(1, len(parts)):  # the folders on the way down
            if not recursive and depth > 1:
                break
            folder = "/".join(([prefix] if prefix else []) + parts[:depth])
            items.setdefault(folder, _folder_item(folder))
        if recursive or len(parts) == 1:
            items[entry.path] = _tree_item(entry)
    if prefix and not items:
        raise HfError(404, "EntryNotFound", f"`{prefix}` does not exist in `{repo.full_name}` at {rev}.")
    ordered = sorted(items.values(), key=lambda i: i["path"])
    page_size = settings.PEFTHUB_HF_TREE_PAGE_SIZE
    start = cursor(request)
    response = JsonResponse(ordered[start : start + page_size], safe=False)
    if start + page_size < len(ordered):
        link_next(request, response, start + page_size)
    return response


def _folder_item(folder: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}


def cursor(request) -> int:
    """Where a page starts: the ``cursor`` of the previous page's ``Link: <...>; rel="next"``, 0 without one."""
    raw = request.GET.get("cursor")
    if not raw:
        return 0
    try:
        # within a 64-bit OFFSET whatever the digits: past every row is past every row
        return min(max(int(base64.urlsafe_b64decode(raw[:64].encode()).decode()), 0), 2**62)
    except ValueError:
        raise HfError(400, None, "Invalid cursor: pass the `cursor` of a `Link: <...>; rel=\"next\"` header as it is.") from None


def link_next(request, response, position: int) -> None:
    """``Link: <this URL with cursor=position>; rel="next"``, which huggingface_hub's ``paginate`` follows."""
    query = request.GET.copy()
    query["cursor"] = base64.urlsafe_b64encode(str(position).encode()).decode()
    response["Link"] = f'<{request.build_absolute_uri(request.path)}?{query.urlencode()}>; rel="next"'


#: paths one ``paths-info`` call may ask about
MAX_PATHS = 1000


@require_http_methods(["POST"])
@hf_view
def paths_info(request, repo_type, ns, name, rev):
    """``get_paths_info`` (and so ``HfFileSystem.info``): the files and folders among ``paths``; absent ones left out."""
    repo = _repo(request, repo_type, ns, name)
    if _empty(repo, rev):
        return JsonResponse([], safe=False)
    resolved = _resolve(repo, rev)
    try:
        wanted = request.POST.getlist("paths")
    except (RequestDataTooBig, TooManyFieldsSent):
        raise HfError(400, None, f"Ask about at most {MAX_PATHS} paths per call, as form fields `paths`.") from None
    if len(wanted) > MAX_PATHS:
        raise HfError(400, None, f"{len(wanted)} paths asked about; ask about at most {MAX_PATHS} per call.")
    files = {e.path: e for e in _entries(request, resolved)}
    folders = {"/".join(p.split("/")[:depth]) for p in files for depth in range(1, p.count("/") + 1)}
    found = []
    for path in dict.fromkeys(p.strip("/") for p in wanted):
        if path in files:
            found.append(_tree_item(files[path]))
        elif path in folders:
            found.append(_folder_item(path))
    return JsonResponse(found, safe=False)


@require_http_methods(["GET", "HEAD"])
@hf_view
def resolve(request, repo_type, ns, name, rev, path):
    repo = _repo(request, repo_type, ns, name)
    if _empty(repo, rev):
        raise HfError(404, "EntryNotFound", f"{path} does not exist in `{repo.full_name}`: it has no version yet.")
    resolved = _resolve(repo, rev)
    entry = next((e for e in _entries(request, resolved) if e.path == path), None)
    if entry is None:
        raise HfError(404, "EntryNotFound", f"{path} does not exist in `{repo.full_name}` at revision {rev}.")
    headers = {"X-Repo-Commit": resolved.commit, "ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes",
               "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
    if entry.dropped:
        headers["X-PeftHub-Dropped-Keys"] = ",".join(entry.dropped)
    store = get_blob_store()
    if entry.generated is None and not store.serves_bytes:
        # Bytes come straight from S3: a presigned URL, with the real file's etag and size.
        location = store.download_url(entry.sha256, base_url=base_url(request), filename=path.rsplit("/", 1)[-1],
                                      expires=settings.PEFTHUB_URL_TTL)
        response = HttpResponseRedirect(location)
        response["X-Linked-Etag"] = f'"{entry.sha256}"'
        response["X-Linked-Size"] = str(entry.size)
        response["X-Repo-Commit"] = headers["X-Repo-Commit"]
        response["ETag"] = headers["ETag"]
        return response
    if entry.generated is not None:
        return bytes_response(request, size=entry.size, headers=headers, content=entry.generated, content_type="text/markdown")
    return bytes_response(request, size=entry.size, headers=headers, path=store.path(entry.sha256))


@csrf_exempt
def not_found(request, path=""):
    return _error(HfError(404, None, f"No Hugging Face-compatible endpoint at {request.path}."))
