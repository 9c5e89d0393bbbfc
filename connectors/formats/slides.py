"""PowerPoint (.pptx) with python-pptx: one page per slide (its shapes' text, tables, groups, then its
speaker notes), so a search hit names the slide."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import pptx
from pptx.enum.shapes import MSO_SHAPE_TYPE

from ..base import Page
from ..errors import DocumentError
from . import FormatLimits, PageImage, Parsed, unreadable_as
from .archive import open_office_zip


def read_pptx(data: bytes, limits: FormatLimits) -> Parsed:
    open_office_zip(data, limits, "PowerPoint").close()
    with unreadable_as("PowerPoint file"):
        deck = pptx.Presentation(io.BytesIO(data))
        slides = list(deck.slides)
        pages = tuple(Page(number, _slide_text(slide)) for number, slide in enumerate(slides, 1))
        images = tuple(PageImage(index, blob) for index, slide in enumerate(slides) for blob in _pictures(slide.shapes))
        title = deck.core_properties.title
    if not pages:
        raise DocumentError("PowerPoint file has no slides")
    return Parsed(pages, title or None, images=images)


def _slide_text(slide) -> str:
    text = "\n".join(piece for piece in _shapes_text(slide.shapes) if piece.strip())
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        if notes is not None and notes.text.strip():
            text += "\n\nNotes: " + notes.text
    return text


def _shapes_text(shapes: Iterable) -> Iterator[str]:
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes_text(shape.shapes)
        elif shape.has_text_frame:
            yield shape.text_frame.text
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                yield " | ".join(cell.text for cell in row.cells)


def _pictures(shapes: Iterable) -> Iterator[bytes]:
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _pictures(shape.shapes)
        elif shape.shape_type == MSO_SHAPE_TYPE.PICTURE:
            yield shape.image.blob
