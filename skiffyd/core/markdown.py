"""Markdown to the HTML subset Matrix clients render (``formatted_body``).

CommonMark with raw HTML disabled (it is escaped, never passed through), plus
strikethrough and tables. Text without markup gets no ``formatted_body``, as
Element does, so a plain message stays plain.
"""

from __future__ import annotations

import functools
import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

HTML_FORMAT = "org.matrix.custom.html"


@functools.cache
def _parser() -> MarkdownIt:
    # Made on the first message sent, not at import: markdown-it's import is
    # ~30 ms of the daemon's start, before the cache is served.
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(
        ["strikethrough", "table"]
    )


def render(body: str) -> str | None:
    """The HTML for ``body``, or None when it has no markup worth sending."""
    rendered = str(_parser().render(body)).strip()
    # A single paragraph whose text is just the escaped body: nothing to format.
    plain = "<p>" + html.escape(body, quote=False).replace("\n", "<br />\n") + "</p>"
    if rendered == plain:
        return None
    if rendered.startswith("<p>") and rendered.endswith("</p>") and rendered.count("<p>") == 1:
        rendered = rendered[3:-4]
    return rendered


def message_content(body: str, msgtype: str, *, markdown: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": body}
    if markdown:
        formatted = render(body)
        if formatted is not None:
            content["format"] = HTML_FORMAT
            content["formatted_body"] = formatted
    return content
