"""Parsers of the office, web and mail formats the filesystem source reads, apart from its I/O.

Each parser takes a file's bytes (already bounded by the source's `max_file_mb`) and its limits, and
returns `Parsed` or raises DocumentError with one line that names the format's problem. A parser's
library is imported on first use, so a source that reads only PDFs never loads python-docx or
trafilatura. PDF and plain text stay in connectors/filesystem.py (PDF pages go through OCR there).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..base import Page
from ..errors import DocumentError

# The suffix of each format's files → "module:function" of its parser in this package.
PARSERS: dict[str, str] = {
    ".docx": "word:read_docx",
    ".pptx": "slides:read_pptx",
    ".xlsx": "sheets:read_xlsx",
    ".csv": "sheets:read_csv",
    ".html": "web:read_html",
    ".htm": "web:read_html",
    ".eml": "mail:read_eml",
    ".msg": "mail:read_msg",
}
MAIL_SUFFIXES = frozenset({".eml", ".msg"})


@dataclass(frozen=True)
class FormatLimits:
    """Bounds that keep one hostile file from taking the process's memory or time."""

    max_unpacked_bytes: int  # an Office file's members, decompressed, together (zip bombs)
    max_archive_members: int  # an Office file's members
    max_cells: int  # a workbook's or CSV file's cells, empty ones in a row included


@dataclass(frozen=True)
class Attachment:
    """A file attached to a message; ingested as a document of its own under the message's id."""

    name: str
    data: bytes


@dataclass(frozen=True)
class PageImage:
    """A picture embedded in a page (a slide's picture, a Word file's inline image): text for OCR."""

    page: int  # index into `Parsed.pages`
    data: bytes  # the image file as embedded (PNG, JPEG…)


@dataclass(frozen=True)
class Parsed:
    pages: tuple[Page, ...]  # numbered where the format has pages (a deck's slides, a workbook's sheets)
    title: str | None = None
    attachments: tuple[Attachment, ...] = ()
    images: tuple[PageImage, ...] = ()


Parser = Callable[[bytes, FormatLimits], Parsed]


def parser_for(suffix: str) -> Parser | None:
    """The parser of files with this (lower-case) suffix, or None when the format is not one of these."""
    target = PARSERS.get(suffix)
    if target is None:
        return None
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


@contextmanager
def unreadable_as(kind: str) -> Iterator[None]:
    """Any error of a parsing library becomes one line, `not a readable KIND: …`; a DocumentError passes."""
    try:
        yield
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - the libraries raise many kinds (lxml, zipfile, olefile…) on a bad file
        detail = " ".join(str(exc).split())[:300]
        raise DocumentError(f"not a readable {kind}: {type(exc).__name__}: {detail}") from exc
