"""Word (.docx) with python-docx: paragraphs and tables in reading order, headers and footers once.

Tracked changes are read as their final text: inserted runs are kept, deleted and moved-away text
(`w:delText`, `w:moveFrom`) is left out; comments live in a part of their own and are not read.
"""

from __future__ import annotations

import io

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from ..base import Page
from . import FormatLimits, PageImage, Parsed, unreadable_as
from .archive import open_office_zip

# The text-bearing elements of a paragraph in document order, outside deletions and tab-stop definitions.
PARAGRAPH_TEXT = ("./descendant::w:t[not(ancestor::w:del or ancestor::w:moveFrom)]"
                  " | ./descendant::w:tab[not(ancestor::w:pPr)] | ./descendant::w:br | ./descendant::w:cr")


def read_docx(data: bytes, limits: FormatLimits) -> Parsed:
    open_office_zip(data, limits, "Word").close()
    with unreadable_as("Word file"):
        document = docx.Document(io.BytesIO(data))
        body = [_block_text(block) for block in document.iter_inner_content()]
        margins = _headers_and_footers(document)
        title = document.core_properties.title
        images = tuple(PageImage(0, document.part.related_parts[rid].blob)
                       for rid in document.element.body.xpath(".//a:blip/@r:embed")
                       if rid in document.part.related_parts)
    text = "\n\n".join(part for part in (margins[0], *body, margins[1]) if part.strip())
    return Parsed((Page(None, text),), title or None, images=images)


def _block_text(block: Paragraph | Table) -> str:
    if isinstance(block, Table):
        return _table_text(block)
    text = _paragraph_text(block)
    style = block.style.name if block.style is not None else ""
    if text.strip() and (style.startswith("Heading ") and style[8:].isdigit() or style == "Title"):
        return "#" * (int(style[8:]) if style != "Title" else 1) + " " + text
    return text


def _paragraph_text(paragraph: Paragraph) -> str:
    pieces = []
    for element in paragraph._p.xpath(PARAGRAPH_TEXT):
        tag = element.tag.rsplit("}", 1)[-1]
        pieces.append(element.text or "" if tag == "t" else "\t" if tag == "tab" else "\n")
    return "".join(pieces)


def _table_text(table: Table) -> str:
    """One line a row, its cells apart by " | " (a merged cell once)."""
    lines = []
    for row in table.rows:
        seen, cells = set(), []
        for cell in row.cells:
            if id(cell._tc) not in seen:
                seen.add(id(cell._tc))
                cells.append(" ".join(_paragraph_text(p) for p in cell.paragraphs).strip())
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def _headers_and_footers(document) -> tuple[str, str]:
    """Each distinct header and footer text once (sections repeat them, or link to the one before)."""
    found: dict[str, list[str]] = {"header": [], "footer": []}
    for section in document.sections:
        for kind in found:
            for part in (getattr(section, kind), getattr(section, f"first_page_{kind}"),
                         getattr(section, f"even_page_{kind}")):
                if part.is_linked_to_previous:
                    continue
                text = "\n".join(_block_text(block) for block in part.iter_inner_content()).strip()
                if text and text not in found[kind]:
                    found[kind].append(text)
    return "\n".join(found["header"]), "\n".join(found["footer"])
