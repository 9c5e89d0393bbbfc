"""The filesystem source on a real SMB share (Debian's Samba on 127.0.0.1): the same chunks as the local
folder, edits, deletes and renames on the share mirrored by the next run, and a share that goes away
half-way through a listing failing the source in one line while nothing is deleted."""

from __future__ import annotations

import json
import shutil

import pytest

from vectormill.connectors.errors import SourceError

from .cli_process import harness_env, run_many
from .corpus import write_config
from .servers.samba import PASSWORD, SambaServer, missing_reason
from .test_shares import chunks_of, local_corpus, source  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=f"no real SMB server: {missing_reason()}")


@pytest.fixture(scope="module")
def samba(tmp_path_factory):
    with SambaServer(tmp_path_factory.mktemp("samba")) as server:
        yield server


@pytest.fixture()
def smb_secret(monkeypatch):
    monkeypatch.setenv("SMB_SECRET_JSON", json.dumps({"password": PASSWORD}))


def smb_source(server: SambaServer, folder: str):
    return source(server.url(folder), storage_options=server.storage_options(), storage_secret_env="SMB_SECRET_JSON")


@pytest.mark.usefixtures("smb_secret")
def test_the_same_files_on_the_share_give_the_same_chunks_as_the_local_folder(samba, local_corpus):
    root, expected = local_corpus
    shutil.copytree(root, samba.share_dir / "same")
    assert chunks_of(smb_source(samba, "same")) == expected
    versions = [ref.version for ref in smb_source(samba, "same").list_documents()]
    assert len(versions) == len(expected) and all(version.split("-")[1] != "0" for version in versions)  # mtime


@pytest.mark.usefixtures("smb_secret")
def test_a_share_that_goes_away_half_way_through_a_listing_fails_the_source_in_one_line(tmp_path, local_corpus):
    with SambaServer(tmp_path / "samba") as server:
        for number in range(4):
            shutil.copytree(local_corpus[0], server.share_dir / "docs" / f"copy{number}")
        src = smb_source(server, "docs")
        fs = src.tree.fs
        folders_listed, listing = [], fs.ls

        def ls_then_stop_the_server(path, *args, **kwargs):
            folders_listed.append(path)
            if len(folders_listed) == 3:
                server.stop()  # the share goes away while the listing walks its folders
            return listing(path, *args, **kwargs)

        fs.ls = ls_then_stop_the_server
        with pytest.raises(SourceError) as caught:
            list(src.list_documents())
    message = str(caught.value)
    assert len(folders_listed) == 3 and "\n" not in message and PASSWORD not in message
    assert message.startswith("source 'docs': cannot list smb://127.0.0.1:") and "nothing is deleted" in message


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_edits_deletes_and_renames_on_the_share_are_mirrored_and_a_share_gone_deletes_nothing(tmp_path, local_corpus):
    with SambaServer(tmp_path / "samba") as server:
        share = server.share_dir / "docs"
        shutil.copytree(local_corpus[0], share)
        options = json.dumps(server.storage_options()).replace('":', '" =').replace("{", "{ ").replace("}", " }")
        write_config(tmp_path, f'storage_options = {options}\nstorage_secret_env = "SMB_SECRET_JSON"\n')
        config = tmp_path / "vectormill.toml"
        config.write_text(config.read_text().replace('root = "pdfs"', f'root = "{server.url("docs")}"'))
        env = dict(harness_env(), SMB_SECRET_JSON=json.dumps({"password": PASSWORD}))
        first, = run_many([["backfill", "--json"]], cwd=tmp_path, env=env)
        (share / "notes.md").write_text("# Notes\n\nThe lighthouse keeper logs every passing ship by name.")
        (share / "pdfs" / "chess.pdf").unlink()
        (share / "office" / "sailing.csv").rename(share / "office" / "sailing-renamed.csv")
        second, edited, renamed = run_many(
            [["backfill", "--json"], ["search", "The lighthouse keeper logs every passing ship", "-k", "1", "--json"],
             ["search", "reef the mainsail before the squall arrives", "-k", "1", "--json"]], cwd=tmp_path, env=env)
        server.stop()
        gone, still = run_many([["backfill", "--json"], ["search", "reef the mainsail before the squall arrives",
                                                         "-k", "1", "--json"]], cwd=tmp_path, env=env)
    assert first["code"] == 0, first["stderr"][-3000:]
    summary = json.loads(first["stdout"].strip().splitlines()[-1])
    assert summary["documents"]["new"] == len(local_corpus[1]) and summary["failures"] == [], summary
    assert second["code"] == 0, second["stderr"][-3000:]
    documents = json.loads(second["stdout"].strip().splitlines()[-1])["documents"]
    assert (documents["new"], documents["changed"], documents["deleted"]) == (1, 1, 2), documents
    assert json.loads(edited["stdout"])[0]["document"] == "notes.md"
    assert json.loads(renamed["stdout"])[0]["document"] == "office/sailing-renamed.csv"

    assert gone["code"] == 1
    summary = json.loads(gone["stdout"].strip().splitlines()[-1])
    (report,) = summary["sources"]
    assert report["status"] == "failed" and "cannot reach smb://127.0.0.1:" in report["error"], report
    assert "nothing is deleted" in report["error"] and "\n" not in report["error"]
    assert PASSWORD not in gone["stdout"] + gone["stderr"]
    assert summary["documents"]["deleted"] == 0
    assert json.loads(still["stdout"])[0]["document"] == "office/sailing-renamed.csv"
