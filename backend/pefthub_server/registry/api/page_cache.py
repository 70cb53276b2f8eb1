"""Rendered pages of the repository list, kept per process under the catalogue generation, with an ETag.

A page is a function of the catalogue's rows, of who asks (the user, and whether an operator who reads
everything), of the URL (its query string, and the scheme and host its ``next``/``previous`` links are built from)
and of the negotiated media type (``indent``). The key holds all of them and the generation
(``registry.generation``), which every write to those rows changes in its own transaction; so a page cached by
any process is never served after a write that could change it, and never to another caller. The generation is
read before the page's rows (one query): see ``registry.generation`` for why that order makes it safe.

A hit costs that query and a lookup; the page's own queries and its rendering are skipped. The value is the
exact bytes the uncached path renders. Pages carry an ``ETag`` (of the bytes), and ``If-None-Match`` with it
gets a 304 whether the page was cached or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from django.core.cache import caches
from django.http import HttpResponse
from django.utils.cache import get_conditional_response

from pefthub_server.registry.generation import catalogue_generation
from pefthub_server.registry.selectors import reads_everything

CACHE = "lists"

#: a cached page: its bytes, content type and ETag
Entry = tuple[bytes, str, str]


def cached_page(request, render: Callable[[], tuple[bytes, str]]) -> HttpResponse:
    """The page ``render()`` makes for ``request`` (its bytes and content type), from the cache when it holds it.

    ``request`` is DRF's, after authentication and content negotiation. What ``render`` raises (a 400, a 404 past the
    last page) is raised, and nothing is cached.
    """
    generation = catalogue_generation()
    key = None if generation is None else _key(request, generation)
    cache = caches[CACHE]
    entry: Entry | None = cache.get(key) if key is not None else None
    if entry is None:
        body, content_type = render()
        entry = (body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
        if key is not None:
            cache.set(key, entry)
    body, content_type, etag = entry
    response = HttpResponse(body, content_type=content_type)
    response["ETag"] = etag
    return get_conditional_response(request, etag=etag, response=response)


def _key(request, generation: int) -> str:
    user = request.user
    caller = f"{user.pk}:{int(reads_everything(user))}" if user.is_authenticated else "-"
    identity = f"{generation}\n{caller}\n{request.accepted_media_type}\n{request.build_absolute_uri()}"
    return hashlib.sha256(identity.encode()).hexdigest()
