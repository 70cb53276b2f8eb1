"""``list_models`` / ``list_datasets`` (``GET /hf/api/models``, ``/hf/api/datasets``) and ``whoami-v2``.

Listings show only what the caller may read (``readable_repositories``): a private repository
is never listed, counted or hinted at. Filters, order and pages are applied by the database,
in a constant number of queries per page whatever the number of repositories. A repository
with no version yet is listed with ``sha`` None. ``filter`` takes the tags the repository info
shows (see :data:`PLAIN_TAGS` and :data:`BASE_TAGS`); a tag the hub never sets is a 400 naming
the choices, not an empty list. Tags a user wrote in a pushed README's front matter are shown
by ``model_info``, not filtered on (they live in the blob, not in the database).
"""

from __future__ import annotations

from django.db.models import Exists, F, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Concat, Lower
from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from pefthub.protocol.manifest import MODEL_CARD
from pefthub.protocol.peft import PEFT_TYPES
from pefthub.protocol.refs import hf_commit
from pefthub_server.core.auth import require_scope
from pefthub_server.hf.views import KINDS, HfError, cursor, hf_view, link_next, repo_summary
from pefthub_server.registry import lineage
from pefthub_server.registry.card import card_data
from pefthub_server.registry.models import Membership, Namespace, Repository, Version, VersionFile
from pefthub_server.registry.selectors import readable_names, readable_repositories

#: ``sort`` values (huggingface_hub sends these); the hub keeps no download or like counts, so those order by id
SORTS = ("id", "lastModified", "createdAt", "downloads", "likes", "trendingScore")
#: a tag without a colon, and the repositories it selects
PLAIN_TAGS = {
    "pefthub": Q(),
    "peft": Q(kind=Repository.Kind.ADAPTER),
    "transformers": Q(kind=Repository.Kind.MODEL),
    "safetensors": Q(kind=Repository.Kind.MODEL),
    **{t.lower(): Q(kind=Repository.Kind.ADAPTER, peft_type__iexact=t) for t in sorted(PEFT_TYPES)},
}
#: `base_model:<repo>`, `base_model:adapter:<repo>` (adapters of it), `base_model:merge:<repo>` (models merged on it)
BASE_TAGS = ("base_model:<ns>/<name>", "base_model:adapter:<ns>/<name>", "base_model:merge:<ns>/<name>")
MAX_FILTERS = 16
MAX_TEXT = 200  # characters of a `search`, `author` or `filter` value
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@require_http_methods(["GET", "HEAD"])
@hf_view
def repo_list(request, repo_type):
    qs = readable_repositories(request.user).filter(kind__in=KINDS[repo_type])
    qs = _filtered(request, qs).select_related("namespace", "base_model__namespace")
    qs = qs.annotate(last_modified=Coalesce(_latest("created_at"), F("created_at")))
    size = _limit(request)
    start = cursor(request)
    page = list(qs.order_by(*_order(request))[start : start + size + 1])
    more, page = len(page) > size, page[:size]
    versions = {v.repository_id: v for v in Version.objects.filter(repository__in=[r.pk for r in page],
                                                                     number=F("repository__latest_number"))}
    full = _flag(request, "full")
    files: dict[int, list[str]] = {}
    if full:  # siblings, as `full=True` asks: one query for the whole page
        for version_id, path in VersionFile.objects.filter(version__in=versions.values()).values_list("version_id", "path"):
            files.setdefault(version_id, []).append(path)
    # the repositories the page's lineages name that the caller may read: one query (none if they name none)
    readable = readable_names(request.user, set().union(*(lineage.named(v.metadata) for v in versions.values())))
    items = []
    for repo in page:
        version = versions.get(repo.pk)
        if version is not None:
            version.repository = repo  # card_data reads the repository: no query per row
        item = repo_summary(repo, version, card_data(version or Version(repository=repo), readable=readable),
                            commit=hf_commit(version.digest) if version is not None else None)
        if full:
            paths = {*files.get(version.pk, []), MODEL_CARD} if version is not None else ()
            item["siblings"] = [{"rfilename": p} for p in sorted(paths)]
        items.append(item)
    response = JsonResponse(items, safe=False)
    if more:
        link_next(request, response, start + size)
    return response


def _latest(field: str) -> Subquery:
    return Subquery(Version.objects.filter(repository=OuterRef("pk"), number=OuterRef("latest_number")).values(field)[:1])


def _text(request, name: str) -> list[str]:
    values = [v for v in request.GET.getlist(name) if v]
    for value in values:
        if len(value) > MAX_TEXT:
            raise HfError(400, None, f"`{name}` is {len(value)} characters long; at most {MAX_TEXT} are accepted.")
    return values


def _filtered(request, qs: QuerySet[Repository]) -> QuerySet[Repository]:
    searches = _text(request, "search")
    if searches:  # a case-insensitive substring of `namespace/name`, as the Hub's search box
        qs = qs.annotate(hf_id=Lower(Concat("namespace__name", Value("/"), "name")))
        for search in searches:
            qs = qs.filter(hf_id__contains=search.lower())
    for author in _text(request, "author")[:1]:
        qs = qs.filter(namespace__name__iexact=author)
    tags = _text(request, "filter")
    if len(tags) > MAX_FILTERS:
        raise HfError(400, None, f"{len(tags)} `filter` values; at most {MAX_FILTERS} are accepted.")
    for tag in tags:
        qs = qs.filter(_tag(tag))
    return qs


def _tag(tag: str) -> Q:
    if tag.lower() in PLAIN_TAGS:
        return PLAIN_TAGS[tag.lower()]
    head, _, rest = tag.partition(":")
    if head == "base_model" and rest:
        relation, _, base = rest.partition(":")
        if not base:
            return _adapters_of(rest) | _merged_on(rest)
        if relation == "adapter":
            return _adapters_of(base)
        if relation == "merge":
            return _merged_on(base)
    raise HfError(400, None, f"`filter={tag[:64]}` is not a tag the hub sets. Tags: {', '.join(PLAIN_TAGS)}; "
                  f"{', '.join(BASE_TAGS)}.")


def _adapters_of(base: str) -> Q:
    ns, _, name = base.partition("/")
    return Q(kind=Repository.Kind.ADAPTER, base_model__namespace__name__iexact=ns, base_model__name__iexact=name)


def _merged_on(base: str) -> Q:
    """Models whose newest version was merged on ``base`` (its lineage, as the card's `base_model` shows it)."""
    merged = Version.objects.filter(repository=OuterRef("pk"), number=OuterRef("latest_number"),
                                    metadata__lineage__base_model__repo=base)
    return Q(Exists(merged), kind=Repository.Kind.MODEL)


def _order(request) -> list:
    sort = request.GET.get("sort") or None
    if sort is not None and sort not in SORTS:
        raise HfError(400, None, f"`sort={sort[:64]}` is not one of {', '.join(SORTS)}.")
    direction = request.GET.get("direction") or "-1"
    if direction not in ("-1", "1"):
        raise HfError(400, None, f"`direction={direction[:16]}` is not one of -1 (descending, the default), 1.")
    # Without `sort`: by id, A to Z, as a reader scans a catalogue. Ties (no download or like counts) by id.
    descending = sort is not None and direction == "-1"
    keys = {"lastModified": [F("last_modified")], "createdAt": [F("created_at")]}.get(sort, [])
    keys += [Lower("namespace__name"), Lower("name"), F("pk")]
    return [key.desc() if descending else key.asc() for key in keys]


def _limit(request) -> int:
    raw = request.GET.get("limit")
    if raw is None or raw == "":
        return PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw[:8]) <= MAX_PAGE_SIZE:
        raise HfError(400, None, f"`limit={raw[:16]}` must be a whole number from 1 to {MAX_PAGE_SIZE}.")
    return int(raw)


def _flag(request, name: str) -> bool:
    return request.GET.get(name, "").lower() in ("1", "true")


# --- who the token is ----------------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD"])
@hf_view
def whoami(request):
    """What ``hf auth whoami`` prints and ``HfApi().whoami()`` parses: the user, their teams, the token's scope."""
    if not request.user.is_authenticated:
        raise HfError(401, None, "Invalid credentials in Authorization header: set HF_TOKEN to a PEFT Hub token.")
    require_scope(request, "read", "see who you are")  # as /api/v1/whoami: a `worker` token is refused
    user, token = request.user, request.auth
    teams = Membership.objects.filter(user=user, namespace__kind=Namespace.Kind.TEAM).select_related("namespace") \
        .order_by(Lower("namespace__name"))
    return JsonResponse({
        "type": "user", "id": f"{user.pk:024x}", "name": user.username, "fullname": user.get_full_name() or user.username,
        "email": user.email or None, "emailVerified": False, "isPro": False, "canPay": False,
        "orgs": [{"type": "org", "id": f"{m.namespace.pk:024x}", "name": m.namespace.name, "fullname": m.namespace.name,
                  "roleInOrg": m.role} for m in teams],
        "auth": {"type": "access_token", "accessToken": {"displayName": token.name, "role": token.scope}},
    })
