"""The demo's sample corpus: bundled texts, written out as PDFs (multi-page), Markdown and text."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fpdf import FPDF

PAGE_BREAK = "<<<page>>>"
AS_PDF = {"backup-policy.md", "api-key-rotation.md", "incident-response.md"}


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


def write_sample_corpus(folder: Path) -> Path:
    """Write the corpus under folder/docs and a config beside it; returns the config's path."""
    docs = folder / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for entry in sorted(resources.files("vectormill.flows").joinpath("sample_corpus").iterdir(), key=lambda e: e.name):
        text = entry.read_text(encoding="utf-8")
        if entry.name in AS_PDF:
            pages = [page.strip() for page in text.split(PAGE_BREAK)]
            write_pdf(pages, docs / entry.name.replace(".md", ".pdf"), title=pages[0].splitlines()[0].lstrip("# "))
        else:
            (docs / entry.name).write_text(text.replace(PAGE_BREAK, ""), encoding="utf-8")
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "docs"\n')
    return config
