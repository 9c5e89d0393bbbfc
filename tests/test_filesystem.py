import os

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError
from vectormill.connectors.file_trees import LocalTree
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.settings import FilesystemSourceSettings

from .corpus import encrypt_pdf, write_broken_pdfs, write_corpus, write_scanned_pdf


def source(root, **kwargs):
    return FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root, **kwargs))


def test_pdfs_are_read_per_page_with_their_metadata(tmp_path):
    known = write_corpus(tmp_path, {"chess": "The Sicilian defence answers e4 with c5."})
    (ref,) = list(source(tmp_path).list_documents())
    assert ref.id == "chess.pdf" and ref.id in known
    document = source(tmp_path).fetch(ref)
    assert [page.number for page in document.pages] == [1, 2, 3]
    assert "Sicilian defence" in document.pages[1].text
    assert document.title == "Chess" and document.location == str(tmp_path / "chess.pdf")
    assert document.modified and document.version == ref.version


def test_include_and_exclude_globs_with_text_and_markdown(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A")
    (tmp_path / "sub" / "b.txt").write_text("B")
    (tmp_path / "sub" / "draft.txt").write_text("draft")
    (tmp_path / "c.csv").write_text("x,y")
    (tmp_path / "d.json").write_text("{}")  # not a format that is read
    ids = [r.id for r in source(tmp_path, exclude=("**/draft.txt",)).list_documents()]
    assert ids == ["a.md", "c.csv", "sub/b.txt"]
    assert [r.id for r in source(tmp_path, formats=["md", ".TXT"], exclude=("**/draft.txt",)).list_documents()] \
        == ["a.md", "sub/b.txt"]
    assert [r.id for r in source(tmp_path, include=("**/*.md", "**/*.csv")).list_documents()] == ["a.md", "c.csv"]


def test_version_changes_with_the_file(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (before,) = source(tmp_path).list_documents()
    os.utime(tmp_path / "a.txt", ns=(1, 1))
    (tmp_path / "a.txt").write_text("two, longer")
    (after,) = source(tmp_path).list_documents()
    assert before.version != after.version


def test_broken_files_fail_with_a_one_line_reason(tmp_path):
    expected = write_broken_pdfs(tmp_path)
    (tmp_path / "huge.txt").write_text("x" * 3_000_000)
    expected["huge.txt"] = "max_file_mb"
    src = source(tmp_path, max_file_mb=1)
    for ref in src.list_documents():
        with pytest.raises(DocumentError) as caught:
            src.fetch(ref)
        reason = str(caught.value)
        assert expected.pop(ref.id) in reason and "\n" not in reason
    assert expected == {}


def test_encrypted_pdf_opens_with_a_password_from_the_environment(tmp_path, monkeypatch):
    write_broken_pdfs(tmp_path)
    monkeypatch.setenv("PDF_PASSWORD", "hunter2")
    document = source(tmp_path, pdf_password_env="PDF_PASSWORD").fetch(DocumentRef("encrypted.pdf", "v"))
    assert "Top secret" in document.text


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_a_copy_protected_pdf_with_only_an_owner_password_opens_without_one(tmp_path, monkeypatch, algorithm):
    from vectormill.flows.sample import write_pdf

    write_pdf(["Protected but readable text.", "Its second page."], tmp_path / "plain.tmp")
    encrypt_pdf(tmp_path / "plain.tmp", tmp_path / "protected.pdf", user_password="", owner_password="owner-only",
                algorithm=algorithm)
    document = source(tmp_path).fetch(DocumentRef("protected.pdf", "v"))
    assert [page.text.strip() for page in document.pages] == ["Protected but readable text.", "Its second page."]
    monkeypatch.setenv("PDF_PASSWORD", "a wrong guess")  # a configured password does not get in the way
    assert source(tmp_path, pdf_password_env="PDF_PASSWORD").fetch(DocumentRef("protected.pdf", "v")).text \
        == document.text


def test_a_copy_protected_scan_is_read_by_ocr(tmp_path):
    write_scanned_pdf(tmp_path / "scan.tmp", ["Lighthouse keepers trim the wick at dusk."])
    encrypt_pdf(tmp_path / "scan.tmp", tmp_path / "scan.pdf", user_password="", owner_password="owner-only")
    (page,) = source(tmp_path, ocr="always").fetch(DocumentRef("scan.pdf", "v")).pages
    assert page.ocr and "wick at dusk" in page.text


def test_a_pdf_needing_a_user_password_keeps_its_message(tmp_path, monkeypatch):
    from vectormill.flows.sample import write_pdf

    write_pdf(["Locked text."], tmp_path / "plain.tmp")
    encrypt_pdf(tmp_path / "plain.tmp", tmp_path / "locked.pdf", user_password="user-secret", owner_password="owner")
    for settings in ({}, {"pdf_password_env": "PDF_PASSWORD"}):
        monkeypatch.setenv("PDF_PASSWORD", "a wrong guess")
        with pytest.raises(DocumentError, match="^encrypted PDF and no working password .set pdf_password_env"):
            source(tmp_path, **settings).fetch(DocumentRef("locked.pdf", "v"))
    monkeypatch.setenv("PDF_PASSWORD", "user-secret")
    assert "Locked text." in source(tmp_path, pdf_password_env="PDF_PASSWORD").fetch(DocumentRef("locked.pdf", "v")).text


def test_paths_leaving_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret outside the root")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    src = source(root)
    assert [r.id for r in src.list_documents()] == ["link.txt"]
    for document_id in ("link.txt", "../outside.txt"):
        with pytest.raises(DocumentError, match="leaves the source root"):
            src.fetch(DocumentRef(document_id, "v"))


class SwappedAfterTheCheck(LocalTree):
    """The source's folder with an attacker's move right after its path check: `swap` runs once `resolve`
    returned."""

    def __init__(self, root, swap):
        super().__init__(root, "docs")
        self.swap = swap

    def resolve(self, document_id):
        checked = super().resolve(document_id)
        self.swap()
        return checked


@pytest.mark.parametrize("swapped", ["the file", "a folder above it"])
def test_a_symlink_swapped_in_after_the_path_check_does_not_lead_out_of_the_root(tmp_path, swapped):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "notes.txt").write_text("harmless notes inside the root")
    (outside / "notes.txt").write_text("secret outside the root")

    def swap():
        if swapped == "the file":
            (root / "sub" / "notes.txt").unlink()
            (root / "sub" / "notes.txt").symlink_to(outside / "notes.txt")
        else:
            (root / "sub").rename(tmp_path / "sub-moved-away")
            (root / "sub").symlink_to(outside)

    src = source(root)
    src.tree = SwappedAfterTheCheck(root, swap)
    with pytest.raises(DocumentError, match="refused: its path changed while it was opened") as caught:
        src.fetch(DocumentRef("sub/notes.txt", "v"))
    assert "\n" not in str(caught.value)


@pytest.mark.timeout(60)  # opening a FIFO used to wait for a writer forever
def test_symlinks_within_the_root_are_followed_and_fifos_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_text("inside the root")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "pipe.txt")
    assert "inside the root" in source(tmp_path).fetch(DocumentRef("alias/a.txt", "v")).text
    with pytest.raises(DocumentError, match="not a regular file"):  # and no wait for a writer
        source(tmp_path).fetch(DocumentRef("pipe.txt", "v"))


def test_a_missing_root_fails_the_listing_and_an_empty_file_is_empty_at_source(tmp_path):
    from vectormill.connectors.errors import DocumentEmpty, SourceError

    with pytest.raises(SourceError, match=r"root folder '.*absent' does not exist \(is the share mounted\?\)"):
        list(source(tmp_path / "absent").list_documents())
    (tmp_path / "blank.md").write_text(" \n\n")
    (tmp_path / "nothing.pdf").write_bytes(b"")
    src = source(tmp_path)
    for ref in src.list_documents():
        with pytest.raises(DocumentEmpty):
            src.fetch(ref)
