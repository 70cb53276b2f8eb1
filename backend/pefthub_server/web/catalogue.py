"""Home (search, filters, sort, paging) and the page of a user or team: what the visitor may read, nothing else.

Every list reads through ``registry.selectors`` (the API's visibility rule); a private
repository is absent from results and from counts. Each page runs a fixed number of queries.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import F, FloatField, OuterRef, Subquery
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_safe

from pefthub.protocol.peft import PEFT_TYPES
from pefthub.protocol.repos import KINDS, VISIBILITIES
from pefthub_server.registry import selectors
from pefthub_server.registry.models import Membership, Namespace, Version

PAGE_SIZE = 30
#: the metric `sort=metric` orders by (lowest first), read from the latest version's metrics
SORT_METRIC = "eval_loss"
SORTS = {"newest": "newest first", "name": "name", "metric": f"{SORT_METRIC} (lowest first)"}
MAX_QUERY = 200


def _latest_metric():
    latest = Version.objects.filter(repository=OuterRef("pk"), number=OuterRef("latest_number"))
    # JSON as it is stored: a number compares as a number in SQLite and PostgreSQL alike
    return Subquery(latest.values(f"metadata__metrics__{SORT_METRIC}")[:1], output_field=FloatField())


def repositories(user, params) -> tuple[object, dict, list[str]]:
    """(the queryset for ``params``, the filters as read, the problems with them) for the home page."""
    problems: list[str] = []

    def choice(name: str, values) -> str:
        value = params.get(name, "")[:MAX_QUERY]
        if value and value not in values:
            problems.append(f"`{name}={value[:64]}` is not one of {', '.join(values)}; showing results without it.")
            return ""
        return value

    filters = {
        "q": params.get("q", "").strip()[:MAX_QUERY],
        "kind": choice("kind", KINDS),
        "visibility": choice("visibility", VISIBILITIES),
        "method": choice("method", sorted(PEFT_TYPES)),
        "namespace": params.get("namespace", "").strip()[:MAX_QUERY],
        "base_model": params.get("base_model", "").strip()[:MAX_QUERY],
        "sort": choice("sort", tuple(SORTS)) or "newest",
    }
    # one search for the API and the pages
    qs = selectors.repository_list(user=user, kind=filters["kind"] or None, namespace=filters["namespace"] or None,
                                   base_model=filters["base_model"] or None, peft_type=filters["method"] or None,
                                   search=filters["q"] or None)
    if filters["visibility"]:
        qs = qs.filter(visibility=filters["visibility"])
    qs = qs.annotate(metric=_latest_metric())
    order = {"newest": [F("created_at").desc(), F("id").desc()], "name": ["namespace__name", "name"],
             "metric": [F("metric").asc(nulls_last=True), "namespace__name", "name"]}[filters["sort"]]
    return qs.order_by(*order), filters, problems


@require_safe
def home(request):
    qs, filters, problems = repositories(request.user, request.GET)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    kept = urlencode({k: v for k, v in filters.items() if v and not (k == "sort" and v == "newest")})
    filtered = any(v for k, v in filters.items() if k != "sort")
    # "No repositories yet" only when the visitor can read none at all, not when a filter matches none
    anything = bool(page.object_list) or (filtered and selectors.readable_repositories(request.user).exists())
    return render(request, "web/home.html", {
        "page": page, "filters": filters, "kept": kept, "filtered": filtered, "anything": anything, "problems": problems,
        "kinds": KINDS, "visibilities": VISIBILITIES, "methods": sorted(PEFT_TYPES), "sorts": SORTS,
        "sort_metric": SORT_METRIC,
    }, status=400 if problems else 200)


@require_safe
def namespace(request, namespace: str):
    """A user's or team's repositories the visitor may read; a team's members for its members."""
    owner = Namespace.objects.filter(name=namespace).select_related("user").first()
    if owner is None:
        raise Http404(f"No user or team `{namespace[:64]}`.")
    repos = selectors.repository_list(user=request.user, namespace=owner.name).annotate(metric=_latest_metric())
    page = Paginator(repos.order_by(F("created_at").desc(), F("id").desc()), PAGE_SIZE).get_page(request.GET.get("page"))
    members = None
    if owner.kind == Namespace.Kind.TEAM and selectors.namespace_role(request.user, owner):
        members = Membership.objects.filter(namespace=owner).select_related("user").order_by("user__username")
    return render(request, "web/namespace.html", {"owner": owner, "page": page, "members": members,
                                                  "sort_metric": SORT_METRIC})
