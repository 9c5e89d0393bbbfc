"""HTML pages with trafilatura: the main text without navigation, headers, footers and other
boilerplate; the title from <title>. A page whose main text trafilatura cannot tell apart (a short
page, a bare fragment) is read whole, markup removed."""

from __future__ import annotations

import trafilatura
from trafilatura.utils import load_html

from ..base import Page
from ..errors import DocumentError
from . import FormatLimits, Parsed, unreadable_as


def read_html(data: bytes, limits: FormatLimits) -> Parsed:
    return html_text(data)


def html_text(data: bytes | str) -> Parsed:
    with unreadable_as("HTML file"):
        tree = load_html(data)
        if tree is None:
            raise DocumentError("not a readable HTML file")
        title = " ".join((tree.findtext(".//title") or "").split())
        text = trafilatura.extract(tree, include_comments=False, include_tables=True, favor_recall=True) \
            or trafilatura.html2txt(tree)
    return Parsed((Page(None, text or ""),), title or None)
