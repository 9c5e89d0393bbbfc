"""The filesystem source on shares that are not mounted: an S3 bucket on moto's server, and (in
test_smb.py) a real Samba share. The same files give the same chunks as a local folder; versions
follow the objects; a listing that fails, fails the source in one line; S3's throttling is retried."""

from __future__ import annotations

import json

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError, DocumentGone, SourceError
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.tokenizer import ModelTokenizer

from .corpus import write_corpus
from .office_corpus import write_office_corpus
from .servers.fault_server import FaultServer
from .servers.s3 import ThrottlingS3Proxy, s3_server  # noqa: F401 - a fixture

SECRET = "s3cr3t-never-printed"


def source(root, **kwargs) -> FilesystemSource:
    return FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root, **kwargs))


def chunks_of(src: FilesystemSource) -> dict[str, list[tuple[str, str, int | None]]]:
    """Every listed document's chunks as the pipeline makes them: (id, content hash, page)."""
    tokenizer = ModelTokenizer.for_model("all-MiniLM-L6-v2")
    return {ref.id: [(chunk.id, chunk.content_hash, chunk.page)
                     for chunk in chunk_document(src.fetch(ref), tokenizer.tokens, 64, 8)]
            for ref in src.list_documents()}


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    write_office_corpus(root / "office")
    write_corpus(root / "pdfs", {"chess": "The Sicilian defence answers e4 with c5."})
    (root / "notes.md").write_text("# Notes\n\nPlain Markdown beside the Office files.")
    return root, chunks_of(source(root))


def s3_options(server, **extra) -> dict:
    options = server.storage_options()
    options.pop("skip_instance_cache")
    del options["key"], options["secret"]  # from the secret below: never in the config
    return {**options, **extra}


@pytest.fixture()
def bucket(s3_server, local_corpus, monkeypatch, request):
    """The local corpus uploaded to a fresh bucket; the source's credentials in an environment variable."""
    import s3fs

    monkeypatch.setenv("S3_SECRET_JSON", json.dumps({"key": "testing-key", "secret": SECRET}))
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    name = f"share-{request.node.name.replace('_', '-')[:40].lower()}"
    fs.mkdir(name)
    fs.put(str(local_corpus[0]) + "/", f"{name}/docs/", recursive=True)
    return fs, name


def s3_source(server, bucket_name: str, **kwargs) -> FilesystemSource:
    return source(f"s3://{bucket_name}/docs", storage_options=s3_options(server), storage_secret_env="S3_SECRET_JSON",
                  **kwargs)


def test_the_same_files_in_a_bucket_give_the_same_chunks_as_the_local_folder(s3_server, bucket, local_corpus):
    _, expected = local_corpus
    assert chunks_of(s3_source(s3_server, bucket[1])) == expected
    assert len(expected) == 9 and all(expected.values())


def test_versions_follow_the_objects_and_edits_deletes_and_renames_show_in_the_next_listing(s3_server, bucket):
    fs, name = bucket
    src = s3_source(s3_server, name)
    before = {ref.id: ref.version for ref in src.list_documents()}
    assert all(version.split("-", 1)[1] for version in before.values())  # size + ETag
    fs.pipe(f"{name}/docs/notes.md", b"# Notes\n\nEdited on the share.")
    fs.rm(f"{name}/docs/pdfs/chess.pdf")
    fs.mv(f"{name}/docs/office/sailing.csv", f"{name}/docs/office/sailing-renamed.csv")
    after = {ref.id: ref.version for ref in src.list_documents()}
    assert set(before) - set(after) == {"pdfs/chess.pdf", "office/sailing.csv"}
    assert set(after) - set(before) == {"office/sailing-renamed.csv"}
    assert after["notes.md"] != before["notes.md"]
    assert {k: v for k, v in after.items() if k != "notes.md"}.items() <= before.items() | {
        ("office/sailing-renamed.csv", after["office/sailing-renamed.csv"])}
    assert "Edited on the share." in src.fetch(DocumentRef("notes.md", after["notes.md"])).text
    with pytest.raises(DocumentGone):
        src.fetch(DocumentRef("pdfs/chess.pdf", before["pdfs/chess.pdf"]))


def test_a_large_object_is_streamed_in_pieces_and_one_over_max_file_mb_fails_before_it_is_read(s3_server, bucket):
    fs, name = bucket
    text = "".join(f"line {n} of a long log on the share\n" for n in range(200_000))  # ~6.6 MB
    fs.pipe(f"{name}/docs/big.txt", text.encode())
    src = s3_source(s3_server, name)
    document = src.fetch(next(ref for ref in src.list_documents() if ref.id == "big.txt"))
    assert document.pages == () and document.text_pieces is not None
    pieces = list(document.text_pieces())
    assert len(pieces) > 1 and "".join(pieces) == text
    with pytest.raises(DocumentError, match="over max_file_mb = 1"):
        s3_source(s3_server, name, max_file_mb=1).fetch(DocumentRef("big.txt", "v"))
    fs.pipe(f"{name}/docs/big.txt", b"changed")  # changed since its fetch: its pieces are not read
    with pytest.raises(DocumentError, match="changed while it was read"):
        list(document.text_pieces())


@pytest.mark.slow  # s3fs waits between its own retries of a throttled request (~20 s in all)
def test_throttling_is_retried_and_a_store_that_keeps_refusing_fails_the_source_in_one_line(s3_server, bucket,
                                                                                            local_corpus):
    _, name = bucket
    with FaultServer(ThrottlingS3Proxy(s3_server.url)) as proxy:
        options = s3_options(s3_server, client_kwargs={"endpoint_url": proxy.url, "region_name": "eu-west-1"},
                             config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}})
        src = source(f"s3://{name}/docs", storage_options=options, storage_secret_env="S3_SECRET_JSON")
        proxy.fail_next(2, 503)
        listed = list(src.list_documents())
        proxy.fail_next(2, 503)
        assert "Sicilian" in src.fetch(next(ref for ref in listed if ref.id == "pdfs/chess.pdf")).text
        throttled = [request for request in proxy.requests if request.fault is not None]
        assert len(throttled) == 4 and len(listed) == len(local_corpus[1])

        proxy.fail_matching(lambda request: True, 503)
        options["config_kwargs"] = {"retries": {"max_attempts": 1}}  # s3fs's own retries still wait, briefly
        with pytest.raises(SourceError) as caught:
            list(source(f"s3://{name}/docs", storage_options=options, storage_secret_env="S3_SECRET_JSON")
                 .list_documents())
        assert sum(request.fault is not None for request in proxy.requests) > 4 + 1  # it asked again
    message = str(caught.value)
    assert "cannot list s3://" in message and "nothing is deleted" in message and "\n" not in message
    assert SECRET not in message


def test_a_store_that_is_gone_or_a_missing_bucket_fails_the_source_in_one_line(s3_server, bucket):
    from .servers.s3 import MotoServer

    with pytest.raises(SourceError, match="cannot list s3://no-such-bucket/docs: .*bucket does not exist"):
        list(s3_source(s3_server, "no-such-bucket").list_documents())
    gone = MotoServer()  # never started: nothing answers on its port
    with pytest.raises(SourceError) as caught:
        list(s3_source(gone, bucket[1]).list_documents())
    assert "nothing is deleted" in str(caught.value) and "\n" not in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_url_root_takes_only_s3_and_smb_and_storage_options_only_with_one():
    with pytest.raises(ValueError, match="a URL root is one of s3://, smb://"):
        FilesystemSourceSettings(name="d", type="filesystem", root="ftp://host/folder")
    with pytest.raises(ValueError, match="for a URL root"):
        FilesystemSourceSettings(name="d", type="filesystem", root="docs", storage_options={"anon": True})
