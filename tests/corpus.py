"""Corpora for tests and benchmarks: real PDFs (good and broken) with known sentences, and configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfReader, PdfWriter

from vectormill.flows.sample import write_pdf

# Topics far apart, so a search for a sentence of one document must find that document.
TOPICS = {
    "volcanoes": "Basaltic lava from shield volcanoes flows far before it cools into black rock.",
    "baking": "Sourdough bread needs a lively starter and a long cold proof overnight in the fridge.",
    "chess": "The Sicilian defence answers the king pawn opening with an early pawn to c5.",
    "sailing": "When the wind backs to the north, reef the mainsail before the squall arrives.",
    "taxes": "Quarterly VAT returns must be filed within one month after the period ends.",
    "astronomy": "Jupiter's great red spot is a storm larger than the whole Earth.",
}

FILLER = (
    "This paragraph adds ordinary context about the subject so that each page holds enough text "
    "to be split into several chunks by the tokenizer. "
)


def topic_pages(topic: str, sentence: str, pages: int = 3) -> list[str]:
    """Pages about one topic; the known sentence stands on page 2."""
    out = []
    for number in range(1, pages + 1):
        body = f"Notes on {topic}, page {number}. " + FILLER * 3
        if number == 2:
            body += sentence + " " + FILLER
        out.append(body)
    return out


def write_corpus(root: Path, topics: dict[str, str] = TOPICS) -> dict[str, str]:
    """One 3-page PDF per topic; returns {relative path: known sentence}."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for topic, sentence in topics.items():
        write_pdf(topic_pages(topic, sentence), root / f"{topic}.pdf", title=topic.title())
        written[f"{topic}.pdf"] = sentence
    return written


SCAN_DPI = 200


def scanned_page(text: str, inches: tuple[float, float] = (6, 8)) -> Image.Image:
    """A page image of text as a scanner gives it: black on white, no text layer."""
    font = ImageFont.load_default(size=42)  # Tesseract reads this font word for word
    width, height = int(inches[0] * SCAN_DPI), int(inches[1] * SCAN_DPI)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for number, line in enumerate(textwrap.wrap(text, width=(width - 120) // 25)[: (height - 120) // 60]):
        draw.text((60, 60 + 60 * number), line, font=font, fill=0)
    return image


def write_scanned_pdf(path: Path, pages: list[str], text_layer_pages: frozenset[int] = frozenset(),
                      inches: tuple[float, float] = (6, 8)) -> None:
    """A PDF of page images of these texts; pages whose 1-based number is in `text_layer_pages` are
    ordinary text pages instead (a partly scanned document)."""
    writer = PdfWriter()
    for number, text in enumerate(pages, 1):
        one_page = path.with_suffix(f".{number}.tmp")
        if number in text_layer_pages:
            write_pdf([text], one_page)
        else:
            scanned_page(text, inches).save(one_page, "PDF", resolution=SCAN_DPI)
        writer.append(one_page)
        one_page.unlink()
    with open(path, "wb") as handle:
        writer.write(handle)


def encrypt_pdf(plain: Path, encrypted: Path, user_password: str, owner_password: str | None = None,
                algorithm: str = "AES-256") -> None:
    """`plain` encrypted as `encrypted`; an empty `user_password` with an owner password is a
    "copy-protected" PDF: anyone may open it, only the owner password lifts its restrictions."""
    writer = PdfWriter(clone_from=plain)
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm=algorithm,
                   permissions_flag=0)  # print, copy and edit all forbidden to the user
    with open(encrypted, "wb") as handle:
        writer.write(handle)


def write_broken_pdfs(root: Path) -> dict[str, str]:
    """Broken files named .pdf; returns {name: a word the failure reason must contain}."""
    good = root / "_good.tmp"
    write_pdf(["A perfectly fine page of text."], good)
    data = good.read_bytes()
    good.unlink()
    (root / "truncated.pdf").write_bytes(data[: len(data) // 3])
    (root / "not-a-pdf.pdf").write_text("just some text pretending to be a PDF\n")

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    with open(root / "empty-text.pdf", "wb") as handle:
        writer.write(handle)

    source = root / "_secret.tmp"
    write_pdf(["Top secret text."], source)
    encrypt_pdf(source, root / "encrypted.pdf", user_password="hunter2")
    source.unlink()
    return {"truncated.pdf": "PDF", "not-a-pdf.pdf": "PDF", "empty-text.pdf": "no extractable text",
            "encrypted.pdf": "encrypted"}


def write_config(folder: Path, extra: str = "", chunk_tokens: int = 64, fetch_batch_size: int = 4) -> Path:
    config = folder / "vectormill.toml"
    config.write_text(
        f'[store]\npath = "store"\n\n[chunking]\ntokens = {chunk_tokens}\noverlap = 8\n\n'
        f'[embedding]\ntask_chunks = 16\n\n'
        f'[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\nfetch_batch_size = {fetch_batch_size}\n{extra}'
    )
    return config
