"""Office, web and mail files: what each format's document holds, hostile files failing alone, and a
search that finds each known sentence's file (a deck's hit naming its slide)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.formats import PARSERS
from vectormill.connectors.settings import FILE_FORMATS, FilesystemSourceSettings

from .cli_process import harness_env, run_many
from .corpus import TOPICS, write_config
from .office_corpus import (ATTACHED_SENTENCE, DECK_SLIDE, NOTES_SENTENCE, html_page, write_eml, write_hostile_files,
                            write_lying_zip_bomb, write_office_corpus, write_zip_bomb)


def source(root, **kwargs):
    return FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root, **kwargs))


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("office")
    return root, write_office_corpus(root)


def test_every_format_named_in_the_settings_has_a_reader():
    assert {"." + name for name in FILE_FORMATS} - {".pdf", ".txt", ".md", ".markdown"} == set(PARSERS)


def test_each_format_reads_its_known_sentence_with_its_pages_and_title(corpus):
    root, known = corpus
    src = source(root)
    refs = list(src.list_documents())
    assert sorted(ref.id for ref in refs) == sorted(known)
    documents = {ref.id: src.fetch(ref) for ref in refs}
    for document_id, sentence in known.items():
        assert sentence in words(documents[document_id].text), document_id

    word = documents["volcanoes.docx"]
    assert word.title == "Volcanoes" and [page.number for page in word.pages] == [None]
    assert "# Volcanoes" in word.text and "crater | wide" in word.text
    assert "kept words" in word.text and "gone words" not in word.text  # tracked changes: the final text
    assert word.text.count("Field notes") == 1 and word.text.count("Page footer") == 1  # two sections, once

    deck = documents["baking.pptx"]
    assert [page.number for page in deck.pages] == [1, 2, 3]
    assert TOPICS["baking"] in deck.pages[DECK_SLIDE - 1].text and NOTES_SENTENCE in deck.pages[2].text

    sheets = documents["chess.xlsx"]
    assert [page.number for page in sheets.pages] == [1, 2]
    assert sheets.pages[1].text.startswith("Sheet: Defences") and f"Notes: {TOPICS['chess']}" in sheets.pages[1].text
    assert f"advice: {TOPICS['sailing']}" in documents["sailing.csv"].text

    page = documents["taxes.html"]
    assert page.title == "Taxes" and "Menu item" not in page.text and "cookie settings" not in page.text

    mail = documents["astronomy.eml"]
    assert mail.title == "Jupiter tonight" and "From: Ada Observer <ada@example.org>" in mail.text
    attached = documents["astronomy.eml/attachments/1-dome-rules.docx"]
    assert attached.version == mail.version and attached.location.endswith("astronomy.eml#dome-rules.docx")


def test_formats_chooses_the_extensions_read_and_attachments_follow_it(corpus):
    root, _ = corpus
    assert [ref.id for ref in source(root, formats=["eml"]).list_documents()] == ["astronomy.eml"]
    assert [ref.id for ref in source(root, formats=["eml", "docx"]).list_documents()] == [
        "astronomy.eml", "astronomy.eml/attachments/1-dome-rules.docx", "volcanoes.docx"]


def test_an_attachment_the_message_no_longer_holds_fails_with_a_reason(tmp_path):
    write_eml(tmp_path / "a.eml", "Hello", "Body text of the message.", {"notes.csv": b"x,y\n1,2\n"})
    src = source(tmp_path)
    (message, attachment) = src.list_documents()
    assert "y: 2" in src.fetch(attachment).text
    write_eml(tmp_path / "a.eml", "Hello", "The attachment was removed.")
    assert [ref.id for ref in src.list_documents()] == ["a.eml"]
    with pytest.raises(DocumentError, match="no longer holds this attachment"):
        src.fetch(attachment)


def test_html_title_comes_from_the_title_element_and_a_short_page_is_read_whole(tmp_path):
    (tmp_path / "short.htm").write_text("<html><head><title> Short   page </title></head><body><p>Just one line."
                                        "</p></body></html>")
    document = source(tmp_path).fetch(DocumentRef("short.htm", "v"))
    assert document.title == "Short page" and "Just one line." in document.text
    (tmp_path / "long.html").write_text(html_page("Long", ["A paragraph of the article body, long enough. " * 20]))
    assert "Menu item" not in source(tmp_path).fetch(DocumentRef("long.html", "v")).text


def test_each_hostile_file_fails_alone_with_its_reason(tmp_path):
    expected = write_hostile_files(tmp_path / "docs")
    write_office_corpus(tmp_path / "docs")
    src = source(tmp_path / "docs", max_cells=10_000)
    read = []
    for ref in src.list_documents():
        if ref.id not in expected:
            read.append(src.fetch(ref).id)
            continue
        with pytest.raises(DocumentError) as caught:
            src.fetch(ref)
        reason = str(caught.value)
        assert expected.pop(ref.id) in reason and "\n" not in reason, reason
    assert expected == {} and len(read) == 7


MEASURE_RSS = textwrap.dedent("""
    import json, resource, sys
    from vectormill.connectors.base import DocumentRef
    from vectormill.connectors.filesystem import FilesystemSource
    from vectormill.connectors.settings import FilesystemSourceSettings
    import docx, openpyxl  # the parsers' imports are not what is measured
    src = FilesystemSource(FilesystemSourceSettings(name="d", type="filesystem", root=sys.argv[1]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reasons = {}
    for name in sys.argv[2:]:
        try:
            src.fetch(DocumentRef(name, "v"))
        except Exception as exc:
            reasons[name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "reasons": reasons}))
""")


def test_a_zip_bomb_of_10_gib_is_refused_without_unpacking_it(tmp_path):
    write_zip_bomb(tmp_path / "bomb.docx")  # its directory says 10 GiB
    write_lying_zip_bomb(tmp_path / "lying.docx")  # its directory says 1 KiB; its stream holds 10 GiB
    done = subprocess.run([sys.executable, "-c", MEASURE_RSS, str(tmp_path), "bomb.docx", "lying.docx"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["grew_kib"] < 200 * 1024, result
    assert "unpacks to 10241 MiB, over max_unpacked_mb" in result["reasons"]["bomb.docx"]
    assert result["reasons"]["lying.docx"].startswith("DocumentError: "), result


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_search_finds_each_formats_known_sentence_and_a_deck_hit_names_its_slide(tmp_path):
    known = write_office_corpus(tmp_path / "pdfs")
    write_config(tmp_path)
    results = run_many([["backfill", "--json"], *(["search", sentence, "-k", "3", "--json"]
                                                   for sentence in known.values())], cwd=tmp_path, env=harness_env())
    assert results[0]["code"] == 0, results[0]["stderr"][-3000:]
    summary = json.loads(results[0]["stdout"].strip().splitlines()[-1])
    assert summary["documents"]["new"] == len(known) and summary["failures"] == []
    for (document_id, sentence), searched in zip(known.items(), results[1:]):
        hits = json.loads(searched["stdout"])
        assert document_id in [hit["document"] for hit in hits[:3]], (sentence, hits)
        if document_id.endswith(".pptx"):
            hit = next(hit for hit in hits if hit["document"] == document_id)
            assert DECK_SLIDE in hit["pages"] and set(hit["pages"]) <= {1, 2, 3}, hit
    assert ATTACHED_SENTENCE in known.values()


def test_the_demo_corpus_holds_a_word_file_and_a_deck_of_a_slide_per_page(tmp_path):
    from vectormill.flows.sample import write_sample_corpus

    write_sample_corpus(tmp_path)
    src = source(tmp_path / "docs")
    documents = {ref.id: src.fetch(ref) for ref in src.list_documents() if ref.id.endswith((".docx", ".pptx"))}
    assert documents["meeting-rooms.docx"].title == "Meeting rooms"
    assert "large room on the third floor" in words(documents["meeting-rooms.docx"].text)
    deck = documents["security-training.pptx"]
    assert [page.number for page in deck.pages] == [1, 2, 3] and "Report phishing" in deck.pages[1].text


def test_a_file_that_is_not_what_its_extension_says_fails_naming_the_format(tmp_path):
    (tmp_path / "fake.msg").write_bytes(b"plain text, not an Outlook message " * 10)
    (tmp_path / "fake.xlsx").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    (tmp_path / "latin1.csv").write_bytes("name,city\nJos\xe9,M\xe1laga\n".encode("latin-1"))
    src = source(tmp_path)
    reasons = {}
    for ref in src.list_documents():
        with pytest.raises(DocumentError) as caught:
            src.fetch(ref)
        reasons[ref.id] = str(caught.value)
    assert reasons["fake.msg"].startswith("not a readable Outlook message")
    assert reasons["fake.xlsx"].startswith("not a readable Excel file")
    assert reasons["latin1.csv"].startswith("CSV file is not UTF-8 text")


SCANNED_SENTENCE = "The lighthouse keeper logs every passing ship in a leather bound journal."


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Tesseract is not installed (Debian: tesseract-ocr)")
def test_a_slide_or_a_word_file_that_is_only_a_picture_of_text_is_read_by_ocr_as_the_source_allows(tmp_path):
    import docx
    import pptx
    from pptx.util import Inches

    from .corpus import scanned_page

    picture = tmp_path / "scan.png"
    scanned_page(SCANNED_SENTENCE, inches=(6, 2)).save(picture, dpi=(200, 200))
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text, slide.placeholders[1].text = "Lighthouses", "A slide of text, with a logo."
    slide.shapes.add_picture(str(picture), Inches(0), Inches(6), width=Inches(1))  # has text: "auto" leaves it
    deck.slides.add_slide(deck.slide_layouts[6]).shapes.add_picture(str(picture), Inches(0), Inches(0),
                                                                     width=Inches(9))
    deck.save(tmp_path / "deck.pptx")
    document = docx.Document()
    document.add_picture(str(picture))
    document.save(tmp_path / "scan.docx")

    deck_read = source(tmp_path).fetch(DocumentRef("deck.pptx", "v"))
    assert [page.ocr for page in deck_read.pages] == [False, True] and deck_read.ocr_seconds > 0
    assert "lighthouse keeper logs every passing ship" in words(deck_read.pages[1].text).lower()
    assert "lighthouse keeper" not in deck_read.pages[0].text
    word_read = source(tmp_path).fetch(DocumentRef("scan.docx", "v"))
    assert word_read.pages[0].ocr and "leather bound journal" in words(word_read.text).lower()
    assert source(tmp_path, ocr="always").fetch(DocumentRef("deck.pptx", "v")).pages[0].ocr
    with pytest.raises(DocumentError, match="no extractable text"):
        source(tmp_path, ocr="never").fetch(DocumentRef("scan.docx", "v"))
