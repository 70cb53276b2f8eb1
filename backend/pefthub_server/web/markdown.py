"""Cards as HTML: markdown-it-py (CommonMark and tables) renders, nh3 sanitises; nothing a README holds runs.

A README may hold raw HTML (``<img>``, ``<details>``): markdown-it passes it through and nh3
keeps only its allow-list of tags and attributes, drops event handlers (``onerror=``),
``<script>``/``<style>`` with their content, and any URL outside http, https and mailto
(``javascript:``). Links get ``rel="noopener noreferrer nofollow"``.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")
URL_SCHEMES = {"http", "https", "mailto"}


def strip_front_matter(text: str) -> str:
    """The text after a leading ``---`` ... ``---`` block (as the card's front matter is shown as facts instead)."""
    if not text.startswith("---\n"):
        return text
    end = text.find("\n---\n", 3)
    return text if end < 0 else text[end + len("\n---\n"):]


def render(text: str) -> str:
    """Safe HTML for markdown ``text``."""
    return nh3.clean(_MARKDOWN.render(text), url_schemes=URL_SCHEMES, link_rel="noopener noreferrer nofollow")
