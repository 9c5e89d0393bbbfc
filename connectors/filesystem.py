"""PDFs, text and Markdown files under one root folder."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError, PdfReadError, PyPdfError

from .base import Document, DocumentRef, Page
from .errors import DocumentError
from .settings import FilesystemSourceSettings

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


class FilesystemSource:
    """Lists files by glob under `root` and reads them; never follows a path out of `root`.

    A document's id is its POSIX path relative to the root; its version is size + mtime, so a
    re-run stats files instead of reading them.
    """

    def __init__(self, settings: FilesystemSourceSettings):
        self.settings = settings
        self.name = settings.name
        self.root = settings.root.resolve()

    def list_documents(self) -> Iterator[DocumentRef]:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                relative = path.relative_to(self.root).as_posix()
                if not self._selected(relative):
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    # A dangling link or a file removed while listing: fetch reports it if listed again.
                    continue
                yield DocumentRef(id=relative, version=f"{stat.st_size}-{stat.st_mtime_ns}",
                                  modified=_iso(stat.st_mtime))

    def _selected(self, relative: str) -> bool:
        posix = PurePosixPath(relative)

        def matches(pattern: str) -> bool:
            # "**/*.pdf" should also match files directly under the root.
            return posix.match(pattern) or fnmatch.fnmatch(relative, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(relative, pattern[3:])
            )

        return any(matches(p) for p in self.settings.include) and not any(
            matches(p) for p in self.settings.exclude
        )

    def resolve(self, document_id: str) -> Path:
        """The file behind an id, refusing any path (via `..` or a symlink) that leaves the root."""
        candidate = (self.root / document_id).resolve()
        if not candidate.is_relative_to(self.root):
            raise DocumentError(f"refused: path leaves the source root {str(self.root)!r}")
        return candidate

    def fetch(self, ref: DocumentRef) -> Document:
        path = self.resolve(ref.id)
        try:
            stat = path.stat()
        except OSError as exc:
            raise DocumentError(f"cannot read file: {exc.strerror or exc}") from exc
        limit = self.settings.max_file_mb * 1024 * 1024
        if stat.st_size > limit:
            raise DocumentError(
                f"file is {stat.st_size / 1024 / 1024:.1f} MB, over max_file_mb = {self.settings.max_file_mb:g}"
            )
        if path.suffix.lower() == ".pdf":
            pages, title = self._read_pdf(path)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            pages, title = self._read_text(path)
        else:
            raise DocumentError(f"unsupported file type {path.suffix!r} (PDF, .txt and .md are read)")
        if not any(page.text.strip() for page in pages):
            raise DocumentError("no extractable text (empty, or scanned images without a text layer)")
        modified = _iso(stat.st_mtime)
        return Document(
            source=self.name,
            id=ref.id,
            version=ref.version,
            title=title or path.stem,
            pages=tuple(pages),
            location=str(path),
            modified=modified,
        )

    def _read_pdf(self, path: Path) -> tuple[list[Page], str | None]:
        try:
            reader = PdfReader(path)
            if reader.is_encrypted:
                password = os.environ.get(self.settings.pdf_password_env or "", "")
                if not password or not reader.decrypt(password):
                    raise DocumentError(
                        "encrypted PDF and no working password "
                        "(set pdf_password_env on the source to an environment variable holding it)"
                    )
            pages = [Page(number, page.extract_text() or "") for number, page in enumerate(reader.pages, 1)]
            title = (reader.metadata or {}).get("/Title") if reader.metadata is not None else None
        except DocumentError:
            raise
        except FileNotDecryptedError as exc:
            raise DocumentError(f"encrypted PDF: {exc}") from exc
        except (PdfReadError, PyPdfError) as exc:
            raise DocumentError(f"not a readable PDF (corrupt or truncated): {exc}") from exc
        except Exception as exc:  # pypdf raises plain errors on some malformed files
            raise DocumentError(f"not a readable PDF: {type(exc).__name__}: {exc}") from exc
        if not pages:
            raise DocumentError("PDF has no pages")
        return pages, str(title) if title else None

    def _read_text(self, path: Path) -> tuple[list[Page], str | None]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
        return [Page(None, text)], None
