"""One way every web page answers a refusal: the service's status and message as a page."""

from __future__ import annotations

from django.shortcuts import render
from rest_framework.exceptions import Throttled

from pefthub_server.core.errors import HubError

TITLES = {400: "That request cannot be answered", 401: "Not signed in", 403: "Not allowed", 404: "Not found",
          409: "Already there", 429: "Too many attempts"}


def refused(request, exc: HubError | Throttled, *, template: str = "web/refused.html", **context):
    """A refusal as a page (``template``, e.g. a form shown again with the error); 429 keeps its Retry-After."""
    status = exc.status if isinstance(exc, HubError) else exc.status_code
    message = exc.message if isinstance(exc, HubError) else str(exc.detail)
    title = TITLES.get(status, "Not allowed")
    response = render(request, template, {"error": message, "title": title, **context}, status=status)
    if isinstance(exc, Throttled) and exc.wait:
        response["Retry-After"] = str(int(exc.wait))
    return response
