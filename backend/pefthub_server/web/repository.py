"""The page of a repository: its card, versions, aliases and their moves, files with downloads, how to use it.

Read through ``registry.selectors.repository_get``: a repository the visitor may not read
is the same 404 as one that does not exist. ``?version=N`` shows version N's card and files
(the latest otherwise). The card is the one the Hugging Face view serves (``registry.card.render_card``:
a pushed README with the hub's facts merged in), rendered by :mod:`web.markdown`.
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe

from pefthub.protocol.errors import ProtocolError
from pefthub.protocol.manifest import MODEL_CARD
from pefthub_server.core.errors import NotFound
from pefthub_server.core.http import base_url, bytes_response
from pefthub_server.registry import lineage, selectors
from pefthub_server.registry.card import MAX_README, readme_bytes, render_card
from pefthub_server.registry.models import Alias, AliasMove, Repository, Version, VersionFile
from pefthub_server.registry.serving import serving_facts
from pefthub_server.registry.storage import get_blob_store
from pefthub_server.web import markdown
from pefthub_server.web.runs import lineage_for

VERSIONS_PER_PAGE = 20
ADAPTERS_SHOWN = 50
MOVES_SHOWN = 50
FILES_SHOWN = 500


def readable(request, namespace: str, name: str) -> Repository:
    """The repository if the visitor may read it; Http404 otherwise (a malformed name included)."""
    try:
        return selectors.repository_get(user=request.user, namespace=namespace, name=name)
    except (NotFound, ProtocolError):
        raise Http404(f"Repository `{namespace[:64]}/{name[:96]}` not found (or you have no access to it).") from None


def _shown_version(repo: Repository, wanted: str | None) -> Version | None:
    versions = Version.objects.filter(repository=repo).select_related(
        "created_by", "repository__namespace", "repository__base_model__namespace", "base_version__repository__namespace")
    if wanted:
        if not wanted.isdigit() or len(wanted) > 9:
            raise Http404(f"`version={wanted[:20]}` is not a version number.")
        version = versions.filter(number=int(wanted)).first()
        if version is None:
            raise Http404(f"`{repo.full_name}` has no version {int(wanted)}.")
        return version
    return versions.order_by("-number").first()


def _card(request, version: Version, files: list[VersionFile]) -> dict:
    pushed = next((f for f in files if f.path == MODEL_CARD), None)
    if pushed is not None and pushed.size > MAX_README:
        return {"too_long": True}
    readable = selectors.readable_names(request.user, lineage.named(version.metadata))
    card = render_card(version, hub_url=base_url(request), readable=readable,
                       readme=None if pushed is None else readme_bytes(pushed.blob_id, pushed.size))
    facts = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in card.data.items()]
    # the same card always renders the same HTML: rendered once per card, however often the page is read
    key = f"web:card:{hashlib.sha256(card.text).hexdigest()}"
    html = cache.get(key)
    if html is None:
        html = markdown.render(markdown.strip_front_matter(card.text.decode("utf-8", errors="replace")))
        cache.set(key, html, timeout=24 * 3600)
    return {"html": html, "facts": facts}


def _ref(version: Version, aliases: list[Alias], chosen: bool) -> str:
    """What the snippets pin: an alias on the shown version (`prod` first), else its number."""
    on_it = sorted((a.name for a in aliases if a.version_id == version.id), key=lambda n: (n != "prod", n))
    return str(version.number) if chosen or not on_it else on_it[0]


def snippets(repo: Repository, ref: str, *, hub_url: str) -> list[tuple[str, str, str]]:
    """(id, title, text) of each "use it" snippet for ``repo`` at ``ref`` (an alias or a version number)."""
    full = f"{repo.full_name}@{ref}"
    if repo.kind == Repository.Kind.DATASET:
        sdk, title, code = (f'folder = Hub().pull("{full}")', "Hugging Face datasets",
                            f'from datasets import load_dataset\ndataset = load_dataset("{repo.full_name}", revision="{ref}")')
    elif repo.kind == Repository.Kind.ADAPTER:
        sdk, title, code = (f'model = Hub().load("{full}")  # the base with this adapter', "peft / transformers",
                            "from peft import AutoPeftModelForCausalLM\n"
                            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo.full_name}", revision="{ref}")')
    else:
        sdk, title, code = (f'model = Hub().load("{full}")', "transformers", "from transformers import AutoModelForCausalLM\n"
                            f'model = AutoModelForCausalLM.from_pretrained("{repo.full_name}", revision="{ref}")')
    hf = (f'export PEFTHUB_URL={hub_url}\neval "$(pefthub env)"   # sets HF_ENDPOINT={hub_url}/hf and HF_TOKEN\n'
          f"python - <<'EOF'\n{code}\nEOF")
    return [("sdk", "Python SDK", f"from pefthub import Hub\n\n{sdk}"), ("cli", "Command line", f"pefthub pull {full}"),
            ("hf", title, hf)]


def _listed(facts: dict | None) -> dict | None:
    return facts and {k.replace("_", " "): ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in facts.items()}


def _fingerprint(fingerprint: dict | None) -> dict | None:
    if not fingerprint:
        return None
    modules = fingerprint.get("modules") or {}
    return {"model type": fingerprint.get("model_type"), "architectures": ", ".join(fingerprint.get("architectures") or []),
            "hidden size": fingerprint.get("hidden_size"), "layers": fingerprint.get("num_layers"),
            "tied embeddings": fingerprint.get("tie_word_embeddings"), "linear modules": len(modules),
            "module names": ", ".join(sorted({m.rsplit(".", 1)[-1] for m in modules}))}


@require_safe
def repository(request, namespace: str, name: str):
    repo = readable(request, namespace, name)
    chosen = request.GET.get("version")
    version = _shown_version(repo, chosen)
    versions = Paginator(Version.objects.filter(repository=repo).select_related("created_by").order_by("-number"),
                         VERSIONS_PER_PAGE).get_page(request.GET.get("versions_page"))
    aliases = list(Alias.objects.filter(repository=repo).select_related("version", "updated_by").order_by("name"))
    by_version: dict[int, list[str]] = {}
    for alias in aliases:
        by_version.setdefault(alias.version_id, []).append(alias.name)
    for v in versions.object_list:
        v.alias_names = by_version.get(v.id, [])
    moves = list(AliasMove.objects.filter(repository=repo).select_related("moved_by").order_by("-moved_at", "-id")[:MOVES_SHOWN + 1])
    context = {"repo": repo, "version": version, "versions": versions, "aliases": aliases,
               "moves": moves[:MOVES_SHOWN], "more_moves": len(moves) > MOVES_SHOWN, "hub_url": base_url(request)}
    if version is not None:
        files = list(VersionFile.objects.filter(version=version).order_by("path")[:FILES_SHOWN + 1])
        context.update(files=files[:FILES_SHOWN], more_files=len(files) > FILES_SHOWN, card=_card(request, version, files),
                       snippets=snippets(repo, _ref(version, aliases, bool(chosen)), hub_url=base_url(request)),
                       serving=_listed(serving_facts(version.adapter_config)), fingerprint=_fingerprint(version.fingerprint),
                       lineage=lineage_for(user=request.user, version=version))
    if repo.kind == Repository.Kind.MODEL:
        adapters = selectors.readable_repositories(request.user).filter(base_model=repo).select_related("namespace")
        shown = list(adapters.order_by("namespace__name", "name")[:ADAPTERS_SHOWN + 1])
        context.update(adapters=shown[:ADAPTERS_SHOWN], more_adapters=len(shown) > ADAPTERS_SHOWN)
    return render(request, "web/repository.html", context)


@require_safe
def download(request, namespace: str, name: str, number: int, path: str):
    """A file of a version the visitor may read: the bytes from a local store, a redirect to a signed URL from S3."""
    repo = readable(request, namespace, name)
    entry = VersionFile.objects.filter(version__repository=repo, version__number=number, path=path).first()
    if entry is None:
        raise Http404(f"`{repo.full_name}@{number}` has no file `{path[:200]}`.")
    store = get_blob_store()
    filename = path.rsplit("/", 1)[-1]
    if not store.serves_bytes:
        return HttpResponseRedirect(store.download_url(entry.blob_id, base_url=base_url(request), filename=filename))
    headers = {"ETag": f'"{entry.blob_id}"', "Accept-Ranges": "bytes",
               "Content-Disposition": content_disposition_header(True, filename)}
    return bytes_response(request, size=entry.size, headers=headers, path=store.path(entry.blob_id))
