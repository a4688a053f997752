"""Markdown to the HTML subset Matrix clients render (``formatted_body``).

CommonMark with raw HTML disabled (it is escaped, never passed through), plus
strikethrough and tables. Text without markup gets no ``formatted_body``, as
Element does, so a plain message stays plain.
"""

from __future__ import annotations

import html
from typing import Any

from markdown_it import MarkdownIt

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(
    ["strikethrough", "table"]
)

HTML_FORMAT = "org.matrix.custom.html"


def render(body: str) -> str | None:
    """The HTML for ``body``, or None when it has no markup worth sending."""
    rendered = str(_md.render(body)).strip()
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
