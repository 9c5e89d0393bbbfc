import os

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.settings import FilesystemSourceSettings

from .corpus import write_broken_pdfs, write_corpus


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
    ids = [r.id for r in source(tmp_path, exclude=("**/draft.txt",)).list_documents()]
    assert ids == ["a.md", "sub/b.txt"]


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
