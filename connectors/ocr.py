"""OCR of PDF pages without a text layer (scans): render the page (pypdfium2), read it with Tesseract.

Which pages to read and whether a document may be read at all are pure decisions
(`pages_needing_ocr`, `check_page_budget`); `Tesseract` and `PageRenderer` do the I/O, and
`PdfOcr` puts them together for one document.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pypdfium2
from PIL import Image

from .errors import DocumentError, SourceError

OcrMode = Literal["auto", "always", "never"]

# A page with fewer visible characters than this has no usable text layer (a blank scan, or
# one carrying only a page number or a scanner's stamp), so "auto" reads its image.
MIN_TEXT_CHARACTERS = 10
# Tesseract is trained on and documented for about 300 dots per inch.
RENDER_DPI = 300
# An A2 page at 300 dpi; a larger page (a poster, or a page box gone wrong) is rendered at a lower
# resolution, so one page's image stays within about 40 MB of memory.
MAX_PAGE_PIXELS = 40_000_000

# PDFium is not thread-safe, not even across documents: one call at a time in the process
# (fetch tasks run on a thread pool). Tesseract itself runs outside it, in its own process.
_PDFIUM = threading.Lock()

INSTALL_HINT = "install tesseract-ocr"


def has_text_layer(text: str) -> bool:
    return sum(not character.isspace() for character in text) >= MIN_TEXT_CHARACTERS


def pages_needing_ocr(texts: Sequence[str], mode: OcrMode) -> tuple[int, ...]:
    """Indexes (0-based) of the pages to read from their images."""
    if mode == "never":
        return ()
    if mode == "always":
        return tuple(range(len(texts)))
    return tuple(index for index, text in enumerate(texts) if not has_text_layer(text))


def render_scale(width_points: float, height_points: float, dpi: int = RENDER_DPI,
                 max_pixels: int = MAX_PAGE_PIXELS) -> float:
    """Pixels per PDF point (1/72 inch) for a page of this size: `dpi`, lowered to fit `max_pixels`."""
    scale = dpi / 72
    pixels = width_points * height_points * scale * scale
    return scale if pixels <= max_pixels else scale * (max_pixels / pixels) ** 0.5


def check_page_budget(pages: int, max_pages: int) -> None:
    if pages > max_pages:
        raise DocumentError(f"{pages} pages need OCR, over ocr_max_pages = {max_pages} "
                            f"(raise it on the source, or set ocr = \"never\")")


class OcrUnavailableError(DocumentError):
    """A document whose text is only on page images, while Tesseract is not installed."""

    def __init__(self, skipped_pages: int):
        super().__init__(f"no extractable text: its {skipped_pages} page(s) are images without a text layer and "
                         f"Tesseract is not installed to read them: {INSTALL_HINT} (and tesseract-ocr-<language>)")
        self.skipped_pages = skipped_pages


class Tesseract:
    """The `tesseract` program found on PATH, run once per page image.

    Run directly rather than through pytesseract, which cannot set the child's environment:
    Tesseract's OpenMP threads spin against each other and against the other fetch tasks, and one
    thread per page was 4-5× faster on a busy 2-core machine (benchmarks/ocr_throughput.py
    measures both). `threads=None` leaves Tesseract's default, for that comparison.
    """

    def __init__(self, languages: Sequence[str], page_timeout: float, threads: int | None = 1):
        self.languages = tuple(languages)
        self.page_timeout = page_timeout
        self.threads = threads
        self._installed: bool | None = None

    def installed(self) -> bool:
        """Whether `tesseract` is on PATH (asked once per object); raises SourceError when it is but a
        wanted language is not — a setup mistake that no document can get past."""
        if self._installed is None:
            try:
                listed = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=60)
            except FileNotFoundError:
                self._installed = False
                return False
            available = set(listed.stdout.split("\n")[1:]) - {""}  # after "List of available languages …:"
            missing = [language for language in self.languages if language not in available]
            if missing:
                raise SourceError(f"Tesseract has no data for ocr_languages {missing}: install "
                                  f"{' '.join('tesseract-ocr-' + name.replace('_', '-').lower() for name in missing)} "
                                  f"(installed: {sorted(available)})")
            self._installed = True
        return self._installed

    def read(self, image: Image.Image, page_number: int) -> str:
        pixels = io.BytesIO()
        image.save(pixels, format="PPM")  # uncompressed: quicker to write than PNG, and Tesseract reads it
        environment = dict(os.environ, OMP_THREAD_LIMIT=str(self.threads)) if self.threads else None
        try:
            done = subprocess.run(
                ["tesseract", "stdin", "stdout", "--dpi", str(image.info.get("dpi", (RENDER_DPI,))[0]),
                 "-l", "+".join(self.languages)],
                input=pixels.getvalue(), capture_output=True, timeout=self.page_timeout, env=environment)
        except subprocess.TimeoutExpired as exc:  # the child is killed
            raise DocumentError(f"OCR of page {page_number} took longer than ocr_page_timeout_seconds = "
                                f"{self.page_timeout:g}; raise it on the source") from exc
        if done.returncode:
            detail = " ".join(done.stderr.decode("utf-8", "replace").split())[-300:]
            raise DocumentError(f"OCR of page {page_number} failed (tesseract exit {done.returncode}): {detail}")
        return done.stdout.decode("utf-8", "replace").strip()


class PageRenderer:
    """Page images of one PDF (its bytes), one PDFium call at a time; use it as a context manager."""

    def __init__(self, data: bytes, password: str | None = None):
        self.data, self.password = data, password
        self.document: pypdfium2.PdfDocument | None = None

    def __enter__(self) -> PageRenderer:
        with _PDFIUM:
            try:
                self.document = pypdfium2.PdfDocument(self.data, password=self.password)
            except pypdfium2.PdfiumError as exc:
                raise DocumentError(f"cannot render the PDF's pages for OCR: {exc}") from exc
        return self

    def render(self, index: int) -> Image.Image:
        """The page as a grayscale image, its resolution in `image.info["dpi"]`."""
        with _PDFIUM:
            page = bitmap = None
            try:
                page = self.document[index]
                scale = render_scale(*page.get_size())
                bitmap = page.render(scale=scale, grayscale=True)
                # A copy: the PIL image would otherwise share memory with the bitmap closed below.
                image = bitmap.to_pil().copy()
            except pypdfium2.PdfiumError as exc:
                raise DocumentError(f"cannot render page {index + 1} for OCR: {exc}") from exc
            finally:
                # Closed here, under the lock: left to the garbage collector they would be freed on any thread.
                for resource in (bitmap, page):
                    if resource is not None:
                        resource.close()
        image.info["dpi"] = (round(scale * 72),) * 2
        return image

    def __exit__(self, *exc_info) -> None:
        with _PDFIUM:
            self.document.close()


@dataclass(frozen=True)
class OcrResult:
    texts: tuple[str, ...]  # every page's text, read from its image where `read` says so
    read: frozenset[int]  # indexes of the pages read by OCR
    skipped: int  # pages that needed OCR and were left as they were: Tesseract is not installed
    seconds: float  # rendering and reading


def image_for_ocr(data: bytes, page_number: int) -> Image.Image:
    """An embedded picture as a grayscale image; one too large to decode safely fails its document."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            image = picture.convert("L")
            dpi = picture.info.get("dpi", (RENDER_DPI,))[0]
    except Image.DecompressionBombError as exc:  # over twice Pillow's MAX_IMAGE_PIXELS
        raise DocumentError(f"an image on page {page_number} is too large to read: {exc}") from exc
    except (OSError, ValueError, SyntaxError):
        return Image.new("L", (1, 1), 255)  # a format Pillow does not read (EMF, SVG…): no text
    image.info["dpi"] = (round(dpi) or RENDER_DPI,) * 2
    return image


class PdfOcr:
    """A source's OCR of PDF pages and of pictures in Office files: the mode, the engine and the bounds of its
    settings."""

    def __init__(self, mode: OcrMode, tesseract: Tesseract, max_pages: int):
        self.mode, self.tesseract, self.max_pages = mode, tesseract, max_pages

    def read(self, data: bytes, texts: Sequence[str], password: str | None = None) -> OcrResult:
        """Pages' texts with those that need it read from their images (`texts`: their text layers)."""
        wanted = pages_needing_ocr(texts, self.mode)
        if not wanted:
            return OcrResult(tuple(texts), frozenset(), 0, 0.0)
        if not self.tesseract.installed():
            return OcrResult(tuple(texts), frozenset(), len(wanted), 0.0)
        check_page_budget(len(wanted), self.max_pages)
        started = time.perf_counter()
        read = list(texts)
        with PageRenderer(data, password) as renderer:
            for index in wanted:
                read[index] = self.tesseract.read(renderer.render(index), index + 1)
        return OcrResult(tuple(read), frozenset(wanted), 0, time.perf_counter() - started)

    def read_images(self, texts: Sequence[str], images: Sequence[tuple[int, bytes]]) -> OcrResult:
        """Pages' texts with the text of their embedded pictures added (`images`: (page index, image file)),
        for the pages the mode picks: "auto", those without text of their own (a slide that is a scan)."""
        wanted = [index for index in pages_needing_ocr(texts, self.mode) if any(page == index for page, _ in images)]
        if not wanted:
            return OcrResult(tuple(texts), frozenset(), 0, 0.0)
        if not self.tesseract.installed():
            return OcrResult(tuple(texts), frozenset(), len(wanted), 0.0)
        pictures = [(page, data) for page, data in images if page in wanted]
        check_page_budget(len(pictures), self.max_pages)
        started = time.perf_counter()
        read = list(texts)
        for page, data in pictures:
            text = self.tesseract.read(image_for_ocr(data, page + 1), page + 1)
            read[page] = f"{read[page]}\n\n{text}" if read[page].strip() else text
        return OcrResult(tuple(read), frozenset(wanted), 0, time.perf_counter() - started)
