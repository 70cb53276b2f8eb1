"""The write half of the Hugging Face-compatible API under ``/hf/``.

With ``eval "$(pefthub env)"`` (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET=1``),
``HfApi().create_repo``, ``upload_file``, ``upload_folder``, ``create_commit``,
``delete_file``, ``PeftModel.push_to_hub``, ``Trainer.push_to_hub`` and ``hf upload`` make
normal hub versions through the same service as ``hub.push`` (``registry.push``):

1. ``create_repo``: a model repository is created as kind `model`; its first version's
   files decide whether it is an adapter (``push.kind_for_files``). Private unless the
   caller asks for public explicitly.
2. ``preupload`` and the LFS batch API (:mod:`pefthub_server.hf.uploads`): small files
   inline, weights through LFS straight to the store; pickles refused before any byte moves.
3. LFS uploads land where ``hub.push`` uploads land: bound to the caller, verified at commit.
4. ``commit``: a delta on ``main`` (the newest version) or a branch, committed by
   ``push.version_create``; a branch moves to the new version.
5. ``create_branch`` / ``create_tag``: aliases, recorded as which one Hugging Face made.

Writes need a token with scope `write` and the `write` role in the namespace; a
repository the caller cannot read is ``RepoNotFound``, as for reads. Xet is not spoken:
its token endpoints answer how to turn it off.
"""

from __future__ import annotations

import hashlib
import io

from django.http import HttpResponseRedirect, JsonResponse
from django.views.decorators.http import require_http_methods

from pefthub.protocol.errors import ProtocolError
from pefthub.protocol.limits import MAX_CONFIG_JSON_SIZE
from pefthub.protocol.manifest import ADAPTER_CONFIG
from pefthub.protocol.refs import HF_MAIN, hf_commit
from pefthub.protocol.words import with_article
from pefthub_server.core.auth import require_scope
from pefthub_server.core.errors import Conflict, HubError, ValidationFailed
from pefthub_server.core.http import base_url
from pefthub_server.core.parsers import JSONParser
from pefthub_server.hf.commit import Commit, manifest, parse_commit
from pefthub_server.hf.views import HfError, _repo, hf_view
from pefthub_server.registry import acceptance, aliases, push, repositories
from pefthub_server.registry.blobs import blob_uploaded, blobs_possessed
from pefthub_server.registry.models import Alias, Namespace, Repository, Version
from pefthub_server.registry.selectors import require_namespace_role, version_resolve
from pefthub_server.registry.storage import get_blob_store

JSON_BODY_MAX = 4 * 1024 * 1024
XET_OFF = ("PEFT Hub does not speak the Xet storage protocol: set HF_HUB_DISABLE_XET=1 "
           "(eval \"$(pefthub env)\" does) and run again; uploads then use the LFS protocol.")


def write_view(*methods):
    """:func:`hf_view` (token, errors as the Hub renders them) for these methods; grammar errors are 400s."""

    def decorate(view):
        def inner(request, *args, **kwargs):
            try:
                return view(request, *args, **kwargs)
            except ProtocolError as exc:
                raise HfError(400, None, exc.message) from None

        inner.__name__ = view.__name__
        return require_http_methods(list(methods))(hf_view(inner))

    return decorate


def json_body(request) -> dict:
    """The request's JSON object, bounded (size, nesting, containers) before it is parsed."""
    if len(request.body) > JSON_BODY_MAX:
        raise HfError(413, None, f"The request body is over {JSON_BODY_MAX} bytes.")
    if not request.body.strip():
        return {}
    value = JSONParser().parse(io.BytesIO(request.body))
    if not isinstance(value, dict):
        raise HfError(400, None, "The request body must be a JSON object.")
    return value


def _may_write(request, namespace: Namespace, action: str) -> None:
    """A token (never a browser session) with scope `write`, and the `write` role in ``namespace``."""
    if getattr(request, "auth", None) is None:
        raise HfError(401, None, f"Sign in to {action}: set HF_TOKEN to a PEFT Hub token "
                                 "(eval \"$(pefthub env)\" does).")
    require_scope(request, "write", action)
    require_namespace_role(request.user, namespace, "write", action=action)


def writable(request, repo_type: str, ns: str, name: str) -> Repository:
    """A repository the caller may push to; one it cannot read is RepoNotFound before any other check."""
    repo = _repo(request, repo_type, ns, name)
    _may_write(request, repo.namespace, f"push to `{repo.full_name}`")
    return repo


def _hf_url(request, repo: Repository) -> str:
    prefix = "datasets/" if repo.kind == Repository.Kind.DATASET else ""
    return f"{base_url(request)}/hf/{prefix}{repo.full_name}"


def head_of(repo: Repository, rev: str) -> tuple[Version | None, str | None]:
    """What a commit to ``rev`` changes: (the version, None) for `main`, (its version, the branch) for a branch."""
    if rev == HF_MAIN:
        return Version.objects.filter(repository=repo).order_by("-number").first(), None
    alias = Alias.objects.filter(repository=repo, name=rev).select_related("version").first()
    if alias is None:
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: {rev}: `{repo.full_name}` has no branch `{rev}`. "
                      "Commit to `main`, or create the branch first (HfApi().create_branch).")
    if alias.ref != Alias.Ref.BRANCH:
        raise HfError(400, None, f"`{rev}` is a tag of `{repo.full_name}`, which commits do not move; commit to "
                      "`main` or to a branch (HfApi().create_branch).")
    return alias.version, rev


def _not_main(ref: str) -> None:
    if ref == HF_MAIN:
        raise HfError(400, None, "`main` is always the newest version; it cannot be created, moved or deleted.")


# --- repositories ------------------------------------------------------------------------


@write_view("POST")
def create_repo(request):
    body = json_body(request)
    repo_type, name, org = body.get("type") or "model", body.get("name"), body.get("organization")
    if repo_type not in ("model", "dataset"):
        raise HfError(400, None, f"PEFT Hub holds models (adapters among them) and datasets, not {repo_type}s.")
    if not isinstance(name, str) or not (org is None or isinstance(org, str)):
        raise HfError(400, None, "`name` (and `organization`, if given) must be strings.")
    visibility = body.get("visibility")
    if visibility not in (None, "public", "private"):
        raise HfError(400, None, f"visibility {visibility!r} is invalid; use `public` or `private`.")
    # The Hub makes a repository public by default; PEFT Hub keeps it private unless asked.
    public = visibility == "public" or body.get("private") is False
    if getattr(request, "auth", None) is None:
        raise HfError(401, None, "Sign in to create repositories: set HF_TOKEN to a PEFT Hub token.")
    require_scope(request, "write", "create repositories")
    kind = Repository.Kind.DATASET if repo_type == "dataset" else Repository.Kind.MODEL
    try:
        repo = repositories.repository_create(
            user=request.user, namespace=org, name=name, kind=kind,
            visibility=Repository.Visibility.PUBLIC if public else Repository.Visibility.PRIVATE)
    except Conflict as exc:  # huggingface_hub's exist_ok=True relies on the 409, and reads `url` from it
        prefix = "datasets/" if kind == Repository.Kind.DATASET else ""
        owner = org or request.user.namespace.name
        response = JsonResponse({"error": exc.message, "url": f"{base_url(request)}/hf/{prefix}{owner}/{name}"},
                                status=409)
        response["X-Error-Message"] = exc.message
        return response
    return JsonResponse({"url": _hf_url(request, repo), "name": repo.full_name, "id": f"{repo.pk:024x}"})


@write_view("DELETE", "POST")
def delete_repo(request):
    body = json_body(request)
    repo_type, name, org = body.get("type") or "model", body.get("name"), body.get("organization")
    if not isinstance(name, str) or not (org is None or isinstance(org, str)):
        raise HfError(400, None, "`name` (and `organization`, if given) must be strings.")
    if org is None:
        namespace = Namespace.objects.filter(user=request.user).first() if request.user.is_authenticated else None
        org = namespace.name if namespace is not None else ""
    repo = _repo(request, "datasets" if repo_type == "dataset" else "models", org, name)
    if getattr(request, "auth", None) is None:
        raise HfError(401, None, "Sign in to delete repositories: set HF_TOKEN to a PEFT Hub token.")
    require_scope(request, "admin", "delete repositories")
    repositories.repository_delete(user=request.user, repo=repo)
    return JsonResponse({})


@write_view("POST")
def validate_yaml(request):
    """huggingface_hub asks before committing a README.md; the hub reads the card itself when it serves it."""
    json_body(request)
    return JsonResponse({"errors": [], "warnings": []})


#: where a Xet token request is sent: hf_xet (Rust) fetches the token itself and shows only the status
#: and the URL of the failed request, so the URL says what to do
XET_OFF_PATH = "/hf/xet-is-off/set-HF_HUB_DISABLE_XET=1-and-run-again"


@write_view("GET", "HEAD", "POST")
def xet_token(request, **_):
    if request.path != XET_OFF_PATH:
        return HttpResponseRedirect(f"{base_url(request)}{XET_OFF_PATH}")
    raise HfError(400, None, XET_OFF)


# --- commits -----------------------------------------------------------------------------


def _store_inline(user, commit: Commit, possessed: dict[str, int]) -> None:
    """Store the inline files the caller does not possess yet, as its own uploads (their content is
    checked by the commit like any other file; pickle magic is refused before anything is stored)."""
    store = get_blob_store()
    for path, data in commit.inline.items():
        acceptance.check_magic(path, data[:16])
    for data in commit.inline.values():
        sha256 = hashlib.sha256(data).hexdigest()
        if possessed.get(sha256) != len(data):
            store.save_bytes(sha256, data)
            blob_uploaded(user_id=user.pk, sha256=sha256, size=len(data))
            possessed[sha256] = len(data)


def _adapter_base(user, repo: Repository, commit: Commit) -> str | None:
    """The base an adapter version is checked against: what its adapter_config.json names, when that is a
    model repository ``user`` can read here; else the repository's own (None); else a 400 saying how."""
    data = commit.inline.get(ADAPTER_CONFIG)
    named = None
    if data is not None and len(data) <= MAX_CONFIG_JSON_SIZE:
        try:
            named = acceptance.parse_json(ADAPTER_CONFIG, data).get("base_model_name_or_path")
        except ValidationFailed:
            return None  # the commit refuses the config itself, saying why
    if isinstance(named, str):
        try:
            repositories.base_resolve(user=user, ref=named)
            return named
        except (HubError, ProtocolError):
            pass  # a path on the pusher's machine, or a repository this user cannot read: not said which
    if repo.base_model_id is not None or data is None:
        return None
    raise HfError(400, None, (
        f"`{repo.full_name}` gets an adapter, and PEFT Hub checks every adapter against its base model on this hub: "
        f"adapter_config.json's base_model_name_or_path is {named!r}, which is not a model repository you can read "
        "here. Load the base from the hub by id (with HF_ENDPOINT set, "
        "`AutoModelForCausalLM.from_pretrained(\"<namespace>/<base>\")`; peft then records that id), or push the "
        f"first version with its base named: `pefthub push <adapter folder> {repo.full_name} --base-model "
        "<namespace>/<base>` (later pushes keep it)."))


@write_view("POST")
def commit(request, repo_type, ns, name, rev):
    repo = writable(request, repo_type, ns, name)
    if request.GET.get("create_pr", "").lower() in ("1", "true"):
        raise HfError(400, None, "PEFT Hub has no pull requests: commit to `main` or to a branch.")
    head, branch = head_of(repo, rev)
    parsed = parse_commit(request.body)
    if parsed.parent is not None and (head is None or parsed.parent != hf_commit(head.digest)):
        now = hf_commit(head.digest) if head is not None else "no commit"
        raise HfError(412, None, f"A commit has happened since {parsed.parent}: `{rev}` of `{repo.full_name}` is at "
                      f"{now}. Fetch it, then commit again.")
    user = request.user
    wanted = {hashlib.sha256(data).hexdigest() for data in parsed.inline.values()} | {
        oid for oid, _ in parsed.lfs.values()}
    possessed = blobs_possessed(user=user, sha256s=wanted)
    _store_inline(user, parsed, possessed)
    files = manifest(parsed, head, sizes=possessed)
    adapter = push.kind_for_files(repo, {f["path"] for f in files}) == Repository.Kind.ADAPTER
    base_model = _adapter_base(user, repo, parsed) if adapter else None
    target = push.push_target(user=user, namespace=repo.namespace.name, name=repo.name, create=False)
    # built on `head`: if the revision moves before the commit holds the repository's lock, a 412, never a lost file
    version, _ = push.version_create(user=user, target=target, files=files, message=parsed.message,
                                     base_model=base_model, aliases=[branch] if branch else (),
                                     head=push.Head(head, branch))
    oid = hf_commit(version.digest)
    return JsonResponse({"commitUrl": f"{_hf_url(request, repo)}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})


# --- branches and tags -------------------------------------------------------------------


def _version_at(repo: Repository, revision: str) -> Version:
    if not repo.latest_number:
        raise HfError(400, None, f"`{repo.full_name}` has no version yet; push one first.")
    try:
        return version_resolve(repo=repo, revision=revision, hf=True)
    except (HubError, ProtocolError) as exc:
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: {revision} for `{repo.full_name}`: {exc}") from None


def _alias_of(repo: Repository, name: str, ref: str) -> None:
    """404 unless ``name`` is an alias Hugging Face lists as ``ref`` (a branch or a tag)."""
    kind = Alias.objects.filter(repository=repo, name=name).values_list("ref", flat=True).first()
    if kind != ref:
        other = f" (`{name}` is {with_article(kind)})" if kind else ""
        raise HfError(404, "RevisionNotFound", f"Invalid rev id: `{repo.full_name}` has no {ref} `{name}`{other}.")


@write_view("POST", "DELETE")
def branch(request, repo_type, ns, name, ref):
    repo = writable(request, repo_type, ns, name)
    _not_main(ref)
    if request.method == "DELETE":
        _alias_of(repo, ref, Alias.Ref.BRANCH)
        aliases.alias_delete(user=request.user, repo=repo, alias=ref)
        return JsonResponse({})
    start = json_body(request).get("startingPoint") or HF_MAIN
    if not isinstance(start, str):
        raise HfError(400, None, "`startingPoint` must be a revision: `main`, a branch, a tag or a commit.")
    aliases.alias_create(user=request.user, repo=repo, alias=ref, version=_version_at(repo, start),
                         ref=Alias.Ref.BRANCH)
    return JsonResponse({})


@write_view("POST", "DELETE")
def tag(request, repo_type, ns, name, ref):
    """POST …/tag/{revision} {"tag"} makes a tag at ``revision``; DELETE …/tag/{tag} removes one."""
    repo = writable(request, repo_type, ns, name)
    if request.method == "DELETE":
        _not_main(ref)
        _alias_of(repo, ref, Alias.Ref.TAG)
        aliases.alias_delete(user=request.user, repo=repo, alias=ref)
        return JsonResponse({})
    new = json_body(request).get("tag")
    if not isinstance(new, str):
        raise HfError(400, None, "`tag` must be the tag's name.")
    _not_main(new)
    aliases.alias_create(user=request.user, repo=repo, alias=new, version=_version_at(repo, ref), ref=Alias.Ref.TAG)
    return JsonResponse({})
