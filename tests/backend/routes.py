"""Django's URL table, walked once for the tests that check every route."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, get_resolver


def url_patterns(under: str | tuple[str, ...], patterns=None, prefix: str = "") -> list[tuple[str, URLPattern]]:
    """(pattern text, pattern) of every route whose text starts with ``under`` (e.g. ``"api/v1/"``)."""
    out = []
    for entry in patterns if patterns is not None else get_resolver().url_patterns:
        text = prefix + str(entry.pattern).lstrip("^").rstrip("$")
        if isinstance(entry, URLResolver):
            out += url_patterns(under, entry.url_patterns, text)
        elif isinstance(entry, URLPattern) and text.startswith(under):
            out.append((text, entry))
    return out


def class_views(under: str) -> list[tuple[str, object, type]]:
    """(pattern text, pattern, view class) of every class-based view under ``under``."""
    return [(text, entry.pattern, entry.callback.view_class) for text, entry in url_patterns(under)
            if hasattr(entry.callback, "view_class")]
