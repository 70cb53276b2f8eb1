"""``list_repo_refs`` and ``list_repo_commits``: aliases as git refs, versions as commits.

Refs: branch ``main`` is the newest version; an alias made by ``create_branch`` (``Alias.ref``
``branch``) is a branch, every other alias a tag. Commits: the versions from a revision down,
newest first, each with its commit id (what ``X-Repo-Commit`` says for it), the first line
of its message as the title, the rest as the message, who pushed it and when.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from pefthub.protocol.refs import HF_MAIN, hf_commit
from pefthub_server.hf.views import _repo, _resolve, cursor, hf_view, link_next
from pefthub_server.registry.models import Alias, Version

COMMITS_PAGE = 100


def _ref(name: str, kind: str, digest: str) -> dict:
    return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": hf_commit(digest)}


@require_http_methods(["GET", "HEAD"])
@hf_view
def refs(request, repo_type, ns, name):
    repo = _repo(request, repo_type, ns, name)
    newest = Version.objects.filter(repository=repo).order_by("-number").values_list("digest", flat=True).first()
    branches = [_ref(HF_MAIN, "heads", newest)] if newest else []
    tags = []
    # `main` always names the newest version in the HF view: an alias of that name is never what it reaches
    for alias in Alias.objects.filter(repository=repo).exclude(name=HF_MAIN).select_related("version").order_by("name"):
        if alias.ref == Alias.Ref.BRANCH:
            branches.append(_ref(alias.name, "heads", alias.version.digest))
        else:
            tags.append(_ref(alias.name, "tags", alias.version.digest))
    body = {"branches": branches, "converts": [], "tags": tags}
    if request.GET.get("include_prs"):
        body["pullRequests"] = []
    return JsonResponse(body)


@require_http_methods(["GET", "HEAD"])
@hf_view
def commits(request, repo_type, ns, name, rev):
    repo = _repo(request, repo_type, ns, name)
    head = _resolve(repo, rev).version.number
    top = min(cursor(request) or head, head)  # a later page's cursor: the number it starts at
    versions = list(Version.objects.filter(repository=repo, number__lte=top).select_related("created_by")
                    .order_by("-number")[: COMMITS_PAGE + 1])
    page = []
    for version in versions[:COMMITS_PAGE]:
        title, _, message = version.message.strip().partition("\n")
        page.append({
            "id": hf_commit(version.digest), "title": title.strip() or f"Version {version.number}",
            "message": message.strip(), "date": version.created_at.isoformat().replace("+00:00", "Z"),
            "authors": [{"user": version.created_by.username}] if version.created_by_id else [],
        })
    response = JsonResponse(page, safe=False)
    if len(versions) > COMMITS_PAGE:
        link_next(request, response, versions[COMMITS_PAGE].number)
    return response
