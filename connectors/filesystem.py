"""The files under one root: a local folder, an S3 bucket or an SMB share (connectors/file_trees.py,
connectors/shares.py), read as PDF, text, Office, HTML and mail documents (connectors/formats/)."""

from __future__ import annotations

import codecs
import fnmatch
import functools
import io
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

from pypdf import PdfReader
from pypdf.errors import FileNotDecryptedError, PdfReadError, PyPdfError

from .base import Document, DocumentRef, Page
from .errors import DocumentEmpty, DocumentError, SourceError
from .file_trees import FileEntry, FileTree, LocalTree
from .formats import MAIL_SUFFIXES, FormatLimits, parser_for
from .ocr import INSTALL_HINT, OcrUnavailableError, PdfOcr, Tesseract
from .settings import FilesystemSourceSettings
from .shares import RemoteTree, storage_options

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
# A text file larger than this is read in pieces while it is chunked, never held whole. Held whole, a text
# costs about three times its size until it is written (its text, its chunks' texts with their overlap, the
# chunk objects), and a run has up to fetch_batch_size × (fetch_ahead + 1) documents in flight: 4 MiB keeps
# that share small, while the files below it (≤ ~3,800 chunks of 254 tokens) keep the whole-document path.
STREAM_TEXT_BYTES = 4 * 1024 * 1024
TEXT_BLOCK_BYTES = 1024 * 1024  # what a streamed text file is read and decoded by
CHANGED_WHILE_READ = "the file changed while it was read; the next run reads it again"
# A message's attachment: "<message id>/attachments/<n>-<its file name>". A message is a file, so no file's
# path can start with it: the ids of attachments never clash with those of files.
ATTACHMENT_ID = re.compile(r"^(?P<message>.+?\.(?:eml|msg))/attachments/(?P<index>[1-9][0-9]*)-(?P<name>[^/]+)$",
                           re.IGNORECASE)


UNSAFE_IN_NAME = re.compile(r"[/\\\x00-\x1f]")  # a folder separator or a control character


def attachment_id(message_id: str, index: int, name: str) -> str:
    return f"{message_id}/attachments/{index}-{UNSAFE_IN_NAME.sub('_', name) or 'attachment'}"


def suffix_of(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


class FilesystemSource:
    """Lists files by glob under `root` and reads them; never follows a path out of `root`.

    A document's id is its POSIX path relative to the root; its version is size + mtime (an S3
    object's: size + ETag), so a re-run lists files instead of reading them (and never OCRs an
    unchanged scan again). PDF pages without a text layer are read by OCR as the source's `ocr`
    setting says (connectors/ocr.py). A message's attachments of a format read here are documents
    of their own, listed under the message's id with its version.
    """

    def __init__(self, settings: FilesystemSourceSettings):
        self.settings = settings
        self.name = settings.name
        self.tree: FileTree = (LocalTree(settings.root, self.name) if not isinstance(settings.root, str)
                               else RemoteTree(settings.root, storage_options(settings), self.name))
        self.suffixes = frozenset("." + name for name in settings.formats)
        self.limits = FormatLimits(int(settings.max_unpacked_mb * 2**20), settings.max_archive_members,
                                   settings.max_cells)
        self.ocr = PdfOcr(settings.ocr, Tesseract(settings.ocr_languages, settings.ocr_page_timeout_seconds),
                          settings.ocr_max_pages)
        if settings.ocr == "always" and not self.ocr.tesseract.installed():
            raise SourceError(f"source {self.name!r} has ocr = \"always\" but Tesseract is not installed: "
                              f"{INSTALL_HINT} (and tesseract-ocr-<language>), or set ocr = \"auto\"")

    def list_documents(self) -> Iterator[DocumentRef]:
        """Every selected file under the root, and the attachments of its messages. A listing is complete or
        the source fails: a folder it cannot read (the root too: missing, not mounted, EACCES, EIO, a stale
        NFS handle, a share gone) raises SourceError naming it, so no run plans deletions from part of a
        listing."""
        for entry in self.tree.entries():
            if not self._selected(entry.path):
                continue
            ref = DocumentRef(id=entry.path, version=entry.version, modified=entry.modified)
            yield ref
            if suffix_of(entry.path) in MAIL_SUFFIXES and self.suffixes - MAIL_SUFFIXES:
                yield from self._attachment_refs(ref)

    def _attachment_refs(self, message: DocumentRef) -> Iterator[DocumentRef]:
        """A message's attachments that are documents here (read at each listing: a message's bytes say
        what it holds). A message that cannot be read lists none: its own fetch reports why."""
        try:
            attachments = self._parse(message.id, self._read(message.id)[0]).attachments
        except DocumentError:
            return
        for index, attachment in enumerate(attachments, 1):
            if suffix_of(attachment.name) in self.suffixes - MAIL_SUFFIXES:
                yield DocumentRef(attachment_id(message.id, index, attachment.name), message.version,
                                  message.modified)

    def _selected(self, relative: str) -> bool:
        if suffix_of(relative) not in self.suffixes:
            return False
        posix = PurePosixPath(relative)

        def matches(pattern: str) -> bool:
            # "**/*.pdf" should also match files directly under the root.
            return posix.match(pattern) or fnmatch.fnmatch(relative, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(relative, pattern[3:])
            )

        return any(matches(p) for p in self.settings.include) and not any(
            matches(p) for p in self.settings.exclude
        )

    def _open(self, document_id: str) -> tuple[BinaryIO, FileEntry]:
        """The file opened, refused when it is over max_file_mb."""
        handle, entry = self.tree.open(document_id)
        if entry.size > self.settings.max_file_mb * 1024 * 1024:
            handle.close()
            raise self._too_large(entry.size)
        return handle, entry

    def _read(self, document_id: str) -> tuple[bytes, FileEntry]:
        """A file's bytes, at most max_file_mb of them."""
        handle, entry = self._open(document_id)
        with handle:
            return self._read_bounded(handle), entry

    def _read_bounded(self, handle: BinaryIO) -> bytes:
        limit = int(self.settings.max_file_mb * 1024 * 1024)
        # Read at most one byte past the limit: a file that grew since its stat is caught too.
        data = handle.read(limit + 1)
        if len(data) > limit:
            raise self._too_large(len(data))
        return data

    def fetch(self, ref: DocumentRef) -> Document:
        attachment = ATTACHMENT_ID.match(ref.id)
        if attachment:
            return self._fetch_attachment(ref, attachment["message"], int(attachment["index"]), attachment["name"])
        handle, entry = self._open(ref.id)
        with handle:
            if suffix_of(ref.id) in TEXT_SUFFIXES and entry.size > STREAM_TEXT_BYTES:
                # Read in pieces while it is chunked; here only as far as its first text that is not blank space.
                if all(not piece.strip() for piece in utf8_pieces(handle, entry.size, TEXT_BLOCK_BYTES)):
                    raise DocumentEmpty("the file holds only blank space")
                return Document(source=self.name, id=ref.id, version=ref.version, title=PurePosixPath(ref.id).stem,
                                pages=(), location=self.tree.location(ref.id), modified=entry.modified,
                                text_pieces=functools.partial(self._text_pieces, entry))
            data = self._read_bounded(handle)
        return self._document(ref, data, ref.id, self.tree.location(ref.id), entry.modified)

    def _fetch_attachment(self, ref: DocumentRef, message_id: str, index: int, name: str) -> Document:
        data, entry = self._read(message_id)
        attachments = self._parse(message_id, data).attachments
        if index > len(attachments) or attachment_id(message_id, index, attachments[index - 1].name) != ref.id:
            raise DocumentError(f"the message {message_id!r} no longer holds this attachment; the next run "
                                "lists it again")
        return self._document(ref, attachments[index - 1].data, name,
                              f"{self.tree.location(message_id)}#{name}", entry.modified)

    def _document(self, ref: DocumentRef, data: bytes, name: str, location: str, modified: str | None) -> Document:
        """The document of a file's bytes; `name` is the file's name (its suffix says its format)."""
        suffix = suffix_of(name)
        if not data.strip() and (not data or suffix in TEXT_SUFFIXES | {".pdf"}):
            raise DocumentEmpty("the file is empty" if not data else "the file holds only blank space")
        ocr_seconds, skipped = 0.0, 0
        if suffix == ".pdf":
            pages, title, ocr_seconds, skipped = self._read_pdf(data)
        elif suffix in TEXT_SUFFIXES:
            pages, title = self._read_text(data), None
        else:
            parsed = self._parse(name, data)
            pages, title = list(parsed.pages), parsed.title
            if parsed.images:
                read = self.ocr.read_images([page.text for page in pages],
                                            [(image.page, image.data) for image in parsed.images])
                pages = [Page(page.number, text, ocr=index in read.read)
                         for index, (page, text) in enumerate(zip(pages, read.texts))]
                ocr_seconds, skipped = read.seconds, read.skipped
        if not any(page.text.strip() for page in pages):
            if skipped:
                raise OcrUnavailableError(skipped)
            hint = "; the source has ocr = \"never\"" if self.settings.ocr == "never" else ""
            raise DocumentError(f"no extractable text (empty, or scanned images without a text layer{hint})")
        return Document(
            source=self.name,
            id=ref.id,
            version=ref.version,
            title=title or PurePosixPath(name).stem,
            pages=tuple(pages),
            location=location,
            modified=modified,
            ocr_seconds=ocr_seconds,
            ocr_skipped_pages=skipped,
        )

    def _parse(self, name: str, data: bytes):
        parser = parser_for(suffix_of(name))
        if parser is None:
            raise DocumentError(f"unsupported file type {suffix_of(name)!r} (read: "
                                f"{', '.join(sorted(self.suffixes))})")
        return parser(data, self.limits)

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

    def _text_pieces(self, fetched: FileEntry) -> Iterator[str]:
        """A large text file's text, read again in pieces: as it was when fetched, or DocumentError."""
        handle, entry = self.tree.open(fetched.path)
        with handle:
            if entry.version != fetched.version:
                raise DocumentError(CHANGED_WHILE_READ)
            yield from utf8_pieces(handle, entry.size, TEXT_BLOCK_BYTES)
            # Written to while it was read (a write that kept its size too), or truncated.
            if not self.tree.unchanged(handle, fetched):
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
