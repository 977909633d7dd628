"""Text that came from a user (method, task, detector and metric names, warnings) inside a
Markdown report: shown as written, never as HTML, a link, emphasis or a table cell break."""

from __future__ import annotations

_SPECIAL = ("\\", "`", "*", "[", "]", "|")


def md_escape(text: str) -> str:
    """``text`` for a Markdown table cell or paragraph: HTML's ``& < >`` as entities (GitHub and
    most renderers pass raw HTML through), Markdown's code, emphasis, link and cell marks
    backslash-escaped; underscores are left, since no common renderer emphasises inside a word
    and metric names are full of them."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for mark in _SPECIAL:
        text = text.replace(mark, "\\" + mark)
    return " ".join(text.splitlines())
