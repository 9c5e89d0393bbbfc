"""The demo's sample corpus: bundled texts, written out as PDFs (multi-page), a Word file, a PowerPoint deck
(a slide per page), Markdown and text."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fpdf import FPDF

PAGE_BREAK = "<<<page>>>"
AS_PDF = {"backup-policy.md", "api-key-rotation.md", "incident-response.md"}
AS_DOCX = {"meeting-rooms.md"}
AS_PPTX = {"security-training.md"}


def write_pdf(pages: list[str], path: Path, title: str | None = None) -> None:
    """A PDF with one text page per entry (also used by tests and benchmarks to make corpora)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text.encode("latin-1", "replace").decode("latin-1"))
    pdf.output(str(path))


def write_docx(markdown: str, path: Path) -> None:
    """A Word file of a Markdown text: "# " lines as headings, the other paragraphs as they are."""
    import docx

    document = docx.Document()
    for paragraph in markdown.split("\n\n"):
        paragraph = " ".join(paragraph.split())
        if paragraph.startswith("# "):
            document.core_properties.title = document.core_properties.title or paragraph[2:]
            document.add_heading(paragraph[2:], level=1)
        elif paragraph:
            document.add_paragraph(paragraph)
    document.save(path)


def write_pptx(pages: list[str], path: Path, title: str) -> None:
    """A deck of one slide per page: its first line the slide's title, the rest its body."""
    import pptx

    deck = pptx.Presentation()
    deck.core_properties.title = title
    for page in pages:
        heading, _, body = page.partition("\n")
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = heading.lstrip("# ")
        slide.placeholders[1].text = " ".join(body.split())
    deck.save(path)


def write_sample_corpus(folder: Path) -> Path:
    """Write the corpus under folder/docs and a config beside it; returns the config's path."""
    docs = folder / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for entry in sorted(resources.files("vectormill.flows").joinpath("sample_corpus").iterdir(), key=lambda e: e.name):
        text = entry.read_text(encoding="utf-8")
        pages = [page.strip() for page in text.split(PAGE_BREAK)]
        title = pages[0].splitlines()[0].lstrip("# ")
        if entry.name in AS_PDF:
            write_pdf(pages, docs / entry.name.replace(".md", ".pdf"), title=title)
        elif entry.name in AS_DOCX:
            write_docx(text, docs / entry.name.replace(".md", ".docx"))
        elif entry.name in AS_PPTX:
            write_pptx(pages, docs / entry.name.replace(".md", ".pptx"), title=title)
        else:
            (docs / entry.name).write_text(text.replace(PAGE_BREAK, ""), encoding="utf-8")
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "docs"\n')
    return config
