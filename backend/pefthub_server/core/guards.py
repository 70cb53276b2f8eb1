"""A URL holding a control character is a 400 before any view runs.

PostgreSQL cannot store or compare U+0000, so ``?search=%00`` or a name ``a%00b`` reaching a
query was a 500; no name, path, revision or query value the hub takes holds a control
character of any kind, so all of them (U+0000 to U+001F, U+007F to U+009F) are refused, in
the path and in the query string, decoded as Django decodes them.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

from django.http import JsonResponse

from pefthub_server.core.errors import error_body

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class ControlCharacterGuard:
    """Refuse a request whose path or query string holds a control character, naming where and which."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        for where, text in (("path", request.path),
                            ("query string", unquote_plus(request.META.get("QUERY_STRING", ""), errors="replace"))):
            if found := _CONTROL.search(text):
                return JsonResponse(error_body(
                    "invalid_url", f"The URL's {where} holds U+{ord(found.group()):04X}, a control character; "
                    "names, paths and query values never hold one. Remove it.", {"where": where}), status=400)
        return self.get_response(request)
