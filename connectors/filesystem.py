"""PDFs, text and Markdown files under one root folder."""

from __future__ import annotations

import codecs
import errno
import fnmatch
import functools
import io
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import BinaryIO

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError, PdfReadError, PyPdfError

from .base import Document, DocumentRef, Page
from .errors import DocumentEmpty, DocumentError, SourceError
from .ocr import INSTALL_HINT, OcrUnavailableError, PdfOcr, Tesseract
from .settings import FilesystemSourceSettings

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
# A text file larger than this is read in pieces while it is chunked, never held whole. Held whole, a text
# costs about three times its size until it is written (its text, its chunks' texts with their overlap, the
# chunk objects), and a run has up to fetch_batch_size × (fetch_ahead + 1) documents in flight: 4 MiB keeps
# that share small, while the files below it (≤ ~3,800 chunks of 254 tokens) keep the whole-document path.
STREAM_TEXT_BYTES = 4 * 1024 * 1024
TEXT_BLOCK_BYTES = 1024 * 1024  # what a streamed text file is read and decoded by
CHANGED_WHILE_READ = "the file changed while it was read; the next run reads it again"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


class FilesystemSource:
    """Lists files by glob under `root` and reads them; never follows a path out of `root`.

    A document's id is its POSIX path relative to the root; its version is size + mtime, so a
    re-run stats files instead of reading them (and never OCRs an unchanged scan again). PDF pages
    without a text layer are read by OCR as the source's `ocr` setting says (connectors/ocr.py).
    """

    def __init__(self, settings: FilesystemSourceSettings):
        self.settings = settings
        self.name = settings.name
        self.root = settings.root.resolve()
        self.ocr = PdfOcr(settings.ocr, Tesseract(settings.ocr_languages, settings.ocr_page_timeout_seconds),
                          settings.ocr_max_pages)
        if settings.ocr == "always" and not self.ocr.tesseract.installed():
            raise SourceError(f"source {self.name!r} has ocr = \"always\" but Tesseract is not installed: "
                              f"{INSTALL_HINT} (and tesseract-ocr-<language>), or set ocr = \"auto\"")

    def list_documents(self) -> Iterator[DocumentRef]:
        """Every selected file under the root. A listing is complete or the source fails: a folder it
        cannot read (the root too: missing, not mounted, EACCES, EIO, a stale NFS handle) raises
        SourceError naming it, so no run plans deletions from part of a listing."""

        def unreadable(exc: OSError) -> None:
            raise self._unreadable(exc) from exc

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                relative = path.relative_to(self.root).as_posix()
                if not self._selected(relative):
                    continue
                try:
                    stat = path.stat()
                except (FileNotFoundError, NotADirectoryError):
                    # A dangling link or a file removed while listing: fetch reports it if listed again.
                    continue
                except OSError as exc:
                    raise self._unreadable(exc) from exc
                yield DocumentRef(id=relative, version=f"{stat.st_size}-{stat.st_mtime_ns}",
                                  modified=_iso(stat.st_mtime))

    def _unreadable(self, exc: OSError) -> SourceError:
        path = exc.filename or str(self.root)
        if exc.errno == errno.ENOENT and path == str(self.root):
            return SourceError(f"source {self.name!r}: root folder {path!r} does not exist (is the share mounted?); "
                               "nothing is deleted")
        return SourceError(f"source {self.name!r}: cannot list {path!r}: {exc.strerror or exc}; the listing would be "
                           "incomplete, so nothing is deleted")

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
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            raise DocumentError(f"refused: path leaves the source root {str(self.root)!r}")
        return candidate

    def _open(self, document_id: str) -> tuple[BinaryIO, Path]:
        """Open the file behind an id, so that what is opened is what was checked.

        `resolve` checks the path; it is then opened one component at a time from the root,
        following no symbolic link, so a link swapped in after the check (for the file or for
        any folder above it) makes the open fail instead of leading out of the root.
        """
        path = self.resolve(document_id)
        parts = path.relative_to(self.root).parts
        no_links = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        folders: list[int] = []
        try:
            folders.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for part in parts[:-1]:
                folders.append(os.open(part, no_links | os.O_DIRECTORY, dir_fd=folders[-1]))
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
            descriptor = os.open(parts[-1], no_links | os.O_NONBLOCK, dir_fd=folders[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where the checked path had a file or folder
                raise DocumentError(f"refused: its path changed while it was opened (no symbolic link is "
                                    f"followed out of the source root {str(self.root)!r})") from exc
            raise DocumentError(f"cannot read file: {exc.strerror or exc}") from exc
        finally:
            for folder in folders:
                os.close(folder)
        return os.fdopen(descriptor, "rb"), path

    def fetch(self, ref: DocumentRef) -> Document:
        handle, path = self._open(ref.id)
        limit = int(self.settings.max_file_mb * 1024 * 1024)
        with handle:
            stat = os.fstat(handle.fileno())
            if not S_ISREG(stat.st_mode):
                raise DocumentError("not a regular file")
            if stat.st_size > limit:
                raise self._too_large(stat.st_size)
            if path.suffix.lower() in TEXT_SUFFIXES and stat.st_size > STREAM_TEXT_BYTES:
                # Read in pieces while it is chunked; here only as far as its first text that is not blank space.
                if all(not piece.strip() for piece in utf8_pieces(handle, limit, TEXT_BLOCK_BYTES)):
                    raise DocumentEmpty("the file holds only blank space")
                return Document(source=self.name, id=ref.id, version=ref.version, title=path.stem, pages=(),
                                location=str(path), modified=_iso(stat.st_mtime), text_pieces=functools.partial(
                                    self._text_pieces, ref.id, stat.st_size, stat.st_mtime_ns))
            # Read at most one byte past the limit: a file that grew since its stat is caught too.
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise self._too_large(len(data))
        if not data.strip() and path.suffix.lower() in TEXT_SUFFIXES | {".pdf"}:
            raise DocumentEmpty("the file is empty" if not data else "the file holds only blank space")
        ocr_seconds, skipped = 0.0, 0
        if path.suffix.lower() == ".pdf":
            pages, title, ocr_seconds, skipped = self._read_pdf(data)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            pages, title = self._read_text(data), None
        else:
            raise DocumentError(f"unsupported file type {path.suffix!r} (PDF, .txt and .md are read)")
        if not any(page.text.strip() for page in pages):
            if skipped:
                raise OcrUnavailableError(skipped)
            hint = "; the source has ocr = \"never\"" if self.settings.ocr == "never" else ""
            raise DocumentError(f"no extractable text (empty, or scanned images without a text layer{hint})")
        return Document(
            source=self.name,
            id=ref.id,
            version=ref.version,
            title=title or path.stem,
            pages=tuple(pages),
            location=str(path),
            modified=_iso(stat.st_mtime),
            ocr_seconds=ocr_seconds,
            ocr_skipped_pages=skipped,
        )

    def _read_pdf(self, data: bytes) -> tuple[list[Page], str | None, float, int]:
        """(pages, title, seconds of OCR, pages left unread for want of Tesseract)."""
        password = None
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                password = self._unlock(reader)
            texts = [page.extract_text() or "" for page in reader.pages]
            title = (reader.metadata or {}).get("/Title") if reader.metadata is not None else None
        except DocumentError:
            raise
        except FileNotDecryptedError as exc:
            raise DocumentError(f"encrypted PDF: {exc}") from exc
        except (PdfReadError, PyPdfError) as exc:
            raise DocumentError(f"not a readable PDF (corrupt or truncated): {exc}") from exc
        except Exception as exc:  # pypdf raises plain errors on some malformed files
            raise DocumentError(f"not a readable PDF: {type(exc).__name__}: {exc}") from exc
        if not texts:
            raise DocumentError("PDF has no pages")
        read = self.ocr.read(data, texts, password)
        pages = [Page(index + 1, text, ocr=index in read.read) for index, text in enumerate(read.texts)]
        return pages, str(title) if title else None, read.seconds, read.skipped

    def _unlock(self, reader: PdfReader) -> str | None:
        """Decrypt a PDF; returns the password that opened it (None: the empty user password).

        A "copy-protected" PDF has only an owner password: it opens with the empty user password,
        as every PDF viewer opens it. Others need the password in `pdf_password_env`.
        """
        if reader.decrypt(""):
            return None
        password = os.environ.get(self.settings.pdf_password_env or "", "")
        if not password or not reader.decrypt(password):
            raise DocumentError(
                "encrypted PDF and no working password "
                "(set pdf_password_env on the source to an environment variable holding it)"
            )
        return password

    def _too_large(self, size: int) -> DocumentError:
        return DocumentError(f"file is {size / 1024 / 1024:.1f} MB, over max_file_mb = {self.settings.max_file_mb:g}")

    def _text_pieces(self, document_id: str, size: int, mtime_ns: int) -> Iterator[str]:
        """A large text file's text, read again in pieces: as it was when fetched, or DocumentError."""
        handle, _ = self._open(document_id)
        with handle:
            stat = os.fstat(handle.fileno())
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                raise DocumentError(CHANGED_WHILE_READ)
            yield from utf8_pieces(handle, size, TEXT_BLOCK_BYTES)
            # Written to while it was read (a write that kept its size too), or truncated.
            if os.fstat(handle.fileno()).st_mtime_ns != mtime_ns:
                raise DocumentError(CHANGED_WHILE_READ)

    def _read_text(self, data: bytes) -> list[Page]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, 0) from exc
        return [Page(None, text)]


def utf8_pieces(handle: BinaryIO, limit: int, block: int) -> Iterator[str]:
    """A file's UTF-8 text a block at a time (a character cut by a block's end comes whole with the next
    piece), as `bytes.decode` reads it all at once; DocumentError past `limit` bytes or at bytes not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes decoded before this block
    while True:
        data = handle.read(block)
        if offset + len(data) > limit:
            raise DocumentError(f"the file grew past {limit} bytes while it was read; the next run reads it again")
        held = len(decoder.getstate()[0])  # the start of a character cut by the block before
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, offset - held) from exc
        if text:
            yield text
        if not data:
            return
        offset += len(data)


def _not_utf8(exc: UnicodeDecodeError, offset: int) -> DocumentError:
    return DocumentError(f"not UTF-8 text: {exc.reason} at byte {offset + exc.start}")
