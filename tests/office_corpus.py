"""Office, web and mail files for tests and benchmarks, generated with the libraries that write them
(python-docx, python-pptx, openpyxl, the standard library's email), good ones and hostile ones."""

from __future__ import annotations

import csv
import io
import struct
import zipfile
import zlib
from email.message import EmailMessage
from pathlib import Path

from .corpus import FILLER, TOPICS

# One format per topic: a search for a topic's sentence must find the file of that format.
FORMAT_OF_TOPIC = {"volcanoes": "docx", "baking": "pptx", "chess": "xlsx", "sailing": "csv", "taxes": "html",
                   "astronomy": "eml"}
ATTACHED_SENTENCE = "The observatory dome opens only when the humidity stays below eighty percent."
DECK_SLIDE = 2  # the slide of the deck's known sentence
NOTES_SENTENCE = "Speaker notes: remind the audience that rye flour ferments faster than wheat."


def write_docx(path: Path, title: str, paragraphs: list[str], *, tracked: tuple[str, str] | None = None,
               table: list[list[str]] | None = None, header: str | None = None, footer: str | None = None) -> None:
    """A Word file: a heading, paragraphs, a table; `tracked` = (inserted, deleted) text as tracked changes;
    a header and a footer on every one of its two sections."""
    import docx
    from docx.enum.section import WD_SECTION
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if tracked:
        paragraph = document.add_paragraph("Tracked: ")
        paragraph._p.append(parse_xml(f'<w:ins {nsdecls("w")} w:id="1" w:author="a"><w:r><w:t xml:space="preserve">'
                                      f'{tracked[0]}</w:t></w:r></w:ins>'))
        paragraph._p.append(parse_xml(f'<w:del {nsdecls("w")} w:id="2" w:author="a"><w:r><w:delText>{tracked[1]}'
                                      f'</w:delText></w:r></w:del>'))
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table):
            for cell, value in zip(row.cells, values):
                cell.text = value
    if header or footer:
        document.add_section(WD_SECTION.NEW_PAGE)
        document.add_paragraph("The second section.")
        for section in document.sections:  # the second links to the first: read once
            if header:
                section.header.paragraphs[0].text = header
            if footer:
                section.footer.paragraphs[0].text = footer
    document.save(path)


def write_pptx(path: Path, title: str, slides: list[tuple[str, str, str | None]]) -> None:
    """A deck: one slide per (title, body, speaker notes or None)."""
    import pptx

    deck = pptx.Presentation()
    deck.core_properties.title = title
    for heading, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = heading
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    deck.save(path)


def write_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
    workbook.save(path)


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def html_page(title: str, article: list[str]) -> str:
    nav = "".join(f'<li><a href="/{n}">Menu item {n}: products, pricing, careers</a></li>' for n in range(12))
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
            f"<header><nav><ul>{nav}</ul></nav></header><main><article><h1>{title}</h1>"
            + "".join(f"<p>{text}</p>" for text in article)
            + "</article></main><footer><p>Copyright footer, cookie settings, imprint, contact us.</p></footer>"
            "</body></html>")


def write_eml(path: Path, subject: str, body: str, attachments: dict[str, bytes] | None = None) -> None:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Ada Observer <ada@example.org>"
    message["To"] = "team@example.org"
    message["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    message.set_content(body)
    for name, data in (attachments or {}).items():
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    path.write_bytes(bytes(message))


def write_office_corpus(root: Path) -> dict[str, str]:
    """One file per format, each about its topic with the topic's known sentence; the mail carries a
    Word attachment with a sentence of its own. Returns {document id: known sentence}."""
    root.mkdir(parents=True, exist_ok=True)
    filler = [FILLER * 2, FILLER * 2]
    known = {}
    for topic, sentence in TOPICS.items():
        fmt = FORMAT_OF_TOPIC[topic]
        path = root / f"{topic}.{fmt}"
        if fmt == "docx":
            write_docx(path, topic.title(), [filler[0], sentence, filler[1]], tracked=("kept words", "gone words"),
                       table=[["Name", "Value"], ["crater", "wide"]], header="Field notes", footer="Page footer")
        elif fmt == "pptx":
            write_pptx(path, topic.title(), [(f"{topic.title()} basics", FILLER * 3, None),
                                             ("The starter", sentence, None),
                                             ("Flours", FILLER * 3, NOTES_SENTENCE)])
        elif fmt == "xlsx":
            write_xlsx(path, {"Openings": [["Opening", "Notes"], ["Ruy Lopez", FILLER]],
                              "Defences": [["Defence", "Notes"], ["Sicilian", sentence], ["French", FILLER]]})
        elif fmt == "csv":
            write_csv(path, [["topic", "advice"], ["sailing", FILLER], ["weather", sentence]])
        elif fmt == "html":
            path.write_text(html_page(topic.title(), [FILLER, sentence, FILLER]))
        else:
            attachment = io.BytesIO()
            write_docx(attachment, "Dome rules", [ATTACHED_SENTENCE, FILLER])  # type: ignore[arg-type]
            write_eml(path, "Jupiter tonight", f"{FILLER}\n\n{sentence}\n\n{FILLER}",
                      {"dome-rules.docx": attachment.getvalue()})
            known[f"{path.name}/attachments/1-dome-rules.docx"] = ATTACHED_SENTENCE
        known[path.name] = sentence
    return known


# ---- hostile files ------------------------------------------------------------------------------

def _deflated_zeros(size: int, block: int = 1 << 20) -> bytes:
    """A raw deflate stream of `size` zero bytes, made without compressing them all: after a full flush the
    compressor's state is reset, so every further block of zeros compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(block)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(size, block)
    last = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)
    return first + repeated * (blocks - 1) + last


def write_zip64(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip of already deflated members (name, raw deflate data, CRC-32, size it declares unpacked), in
    ZIP64 form so that a declared size may pass 4 GiB."""
    out, directory = io.BytesIO(), []
    for name, data, crc, size in members:
        offset = out.tell()
        encoded = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                              len(encoded), len(extra)) + encoded + extra + data)
        extra = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
        directory.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                                     0xFFFFFFFF, len(encoded), len(extra), 0, 0, 0, 0, 0xFFFFFFFF)
                         + encoded + extra)
    start = out.tell()
    out.write(b"".join(directory))
    end = out.tell()
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(members), len(members), end - start,
                          start))
    out.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    path.write_bytes(out.getvalue())


def _members_of(docx_bytes: bytes) -> list[tuple[str, bytes, int, int]]:
    with zipfile.ZipFile(io.BytesIO(docx_bytes)) as archive:
        members = []
        for info in archive.infolist():
            data = archive.read(info)
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            members.append((info.filename, compressor.compress(data) + compressor.flush(), zlib.crc32(data),
                            len(data)))
        return members


def _small_docx(text: str = "A harmless paragraph.") -> bytes:
    buffer = io.BytesIO()
    write_docx(buffer, "Small", [text])  # type: ignore[arg-type]
    return buffer.getvalue()


def write_zip_bomb(path: Path, unpacked: int = 10 * 2**30) -> None:
    """A .docx with a media member that unpacks to `unpacked` bytes of zeros (10 GiB: ~10 MB on disk)."""
    write_zip64(path, [*_members_of(_small_docx()), ("word/media/image1.png", _deflated_zeros(unpacked), 0,
                                                     unpacked)])


def write_lying_zip_bomb(path: Path, unpacked: int = 10 * 2**30) -> None:
    """A .docx whose document part declares 1 KiB but holds a stream of `unpacked` zero bytes."""
    members = [m for m in _members_of(_small_docx()) if m[0] != "word/document.xml"]
    write_zip64(path, [*members, ("word/document.xml", _deflated_zeros(unpacked), zlib.crc32(bytes(1024)), 1024)])


def _replace_member(docx_bytes: bytes, name: str, data: bytes | None, extra: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(docx_bytes)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, data if info.filename == name and data is not None else source.read(info))
        for member, content in (extra or {}).items():
            target.writestr(member, content)
    return out.getvalue()


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY a "ha"> '
                  + " ".join(f'<!ENTITY {chr(98 + n)} "{("&" + chr(97 + n) + ";") * 10}">' for n in range(9))
                  + ' ]><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
                  '<w:body><w:p><w:r><w:t>&j;</w:t></w:r></w:p></w:body></w:document>')


def write_hostile_files(root: Path) -> dict[str, str]:
    """Each hostile file of the issue's list, with the words its failure's reason must hold."""
    root.mkdir(parents=True, exist_ok=True)
    write_zip_bomb(root / "bomb.docx")
    write_lying_zip_bomb(root / "lying-bomb.docx")
    (root / "laughs.docx").write_bytes(_replace_member(_small_docx(), "word/document.xml", BILLION_LAUGHS.encode()))
    (root / "macro.docx").write_bytes(_replace_member(_small_docx(), "", None, {"word/vbaProject.bin": b"VBA" * 100}))
    write_encrypted_docx(root / "locked.docx")
    write_million_row_sheet(root / "million.xlsx")
    (root / "truncated.pptx").write_bytes(_small_docx()[:500])
    return {"bomb.docx": "max_unpacked_mb", "lying-bomb.docx": "no root element",
            "laughs.docx": "declares a DTD", "macro.docx": "macro project", "locked.docx": "password-protected",
            "million.xlsx": "max_cells", "truncated.pptx": "not a readable PowerPoint file"}


def write_encrypted_docx(path: Path, password: str = "hunter2") -> None:
    from msoffcrypto.format.ooxml import OOXMLFile

    plain = io.BytesIO(_small_docx("Secret plans."))
    with open(path, "wb") as out:
        OOXMLFile(plain).encrypt(password, out)


def write_million_row_sheet(path: Path, rows: int = 1_000_000) -> None:
    """A workbook whose one sheet has `rows` rows of two cells (its XML written directly: openpyxl would take
    a minute), with its <dimension> as Excel writes it (without one, openpyxl scans the whole sheet to open it)."""
    buffer = io.BytesIO()
    write_xlsx(buffer, {"Big": [["id", "value"]]})  # type: ignore[arg-type]
    body = "".join(f'<row r="{n}"><c r="A{n}"><v>{n}</v></c><c r="B{n}" t="inlineStr"><is><t>row {n}</t></is></c>'
                   f'</row>' for n in range(1, rows + 1))
    sheet = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats'
             f'.org/spreadsheetml/2006/main"><dimension ref="A1:B{rows}"/><sheetData>{body}</sheetData></worksheet>')
    path.write_bytes(_replace_member(buffer.getvalue(), "xl/worksheets/sheet1.xml", sheet.encode()))
