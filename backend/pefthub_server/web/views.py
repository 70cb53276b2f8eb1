"""Server-rendered catalogue: the repositories the signed-in (session) user can read."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.shortcuts import render

from pefthub_server.registry import selectors


def catalogue(request):
    q = request.GET
    repos = selectors.repository_list(
        user=request.user, kind=q.get("kind"), namespace=q.get("namespace"), base_model=q.get("base_model"),
        peft_type=q.get("peft_type"), search=q.get("search"),
    )
    page = Paginator(repos, 50).get_page(q.get("page"))
    return render(request, "web/catalogue.html", {"page": page, "query": q})
