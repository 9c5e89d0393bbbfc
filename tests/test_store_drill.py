"""`store drill` (issue 19): a replica's newest generation restores into a temporary folder, verifies and answers
its own chunks first; any damage fails it on one line, and the primary is never touched."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vectormill.cli.common import UserError
from vectormill.stores.drill import drill
from vectormill.stores.errors import StoreError
from vectormill.stores.replicas import Location
from vectormill.stores.settings import StoreSettings

from .test_replicas import run_cli
from .test_store import open_store, write_batches


def replicated_store(tmp_path, batches=30, **overrides):
    """A store of `batches` batches, checkpointed twice, with one directory replica."""
    values = dict(path=tmp_path / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                  keep_generations=2, replica_attempts=1, replica_backoff_seconds=0.01,
                  replicas=[{"name": "disk", "url": str(tmp_path / "replica")}])
    values.update(overrides)
    config = StoreSettings(**values)
    with open_store(config) as store:
        write_batches(store, 0, batches // 2)
        store.checkpoint()
        write_batches(store, batches // 2, batches)
        store.checkpoint()
        assert store.replication_problem() is None
        counts = store.stats()
    return config, counts


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def drills_left() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob("vectormill-drill-*"))


def test_a_healthy_replica_drills_ok_and_the_primary_is_untouched(tmp_path):
    config, counts = replicated_store(tmp_path)
    before, left_before = hashes(config.path), drills_left()
    report = drill(config)
    assert report["ok"] and report["replica"] == "disk" and report["exact"]
    assert report["generation"] == Location.replica(config.replicas[0]).generations()[0]
    assert (report["documents"], report["vectors"]) == (counts["documents"], counts["vectors"])
    assert report["queries"] == 20 and report["agreement"] == 1.0
    assert report["age_seconds"] >= 0 and report["restore_seconds"] > 0
    assert hashes(config.path) == before  # not a byte of the primary changed
    assert drills_left() == left_before  # the temporary folder is gone

    result = run_cli(tmp_path, config, ["store", "drill", "--from", "disk", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert {"ok", "replica", "generation", "documents", "vectors", "age_seconds", "restore_seconds", "queries",
            "agreement"} <= printed.keys() and printed["ok"]
    shown = run_cli(tmp_path, config, ["store", "drill"])
    assert shown.exit_code == 0 and "restore_seconds" in shown.stdout and "answers its own chunks first" in shown.stdout
    assert hashes(config.path) == before


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_replica_file_fails_the_drill_on_one_line(tmp_path, damage):
    config, _ = replicated_store(tmp_path)
    before = hashes(config.path)
    segment = max((tmp_path / "replica" / "segments").glob("*.faiss"), key=lambda p: p.stat().st_mtime)
    if damage == "corrupt":
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
    else:
        segment.unlink()
    with pytest.raises(StoreError, match="does not restore"):
        drill(config)
    result = run_cli(tmp_path, config, ["store", "drill"])  # main() prints a UserError's lines, each `error: ...`
    assert isinstance(result.exception, UserError) and result.exception.code == 1, result.output
    [line] = result.exception.lines
    assert line.startswith("drill: generation ") and "'disk'" in line and "\n" not in line, line
    assert hashes(config.path) == before  # the primary holds the intact file: never used, never changed


def test_no_replica_or_an_empty_one_fails_the_drill(tmp_path):
    config, _ = replicated_store(tmp_path, batches=4, replicas=[], min_replicas_confirmed=0)
    with pytest.raises(StoreError, match="no replica configured"):
        drill(config)
    empty = config.model_copy(update={"replicas": StoreSettings(
        replicas=[{"name": "new", "url": str(tmp_path / "empty")}]).replicas})
    with pytest.raises(StoreError, match="holds no generation"):
        drill(empty)
    with pytest.raises(StoreError, match="no replica named 'other': choose one of new"):
        drill(empty, "other")


def test_the_drill_artifact_shows_the_figures_or_the_error():
    from vectormill.flows.artifacts import drill_markdown

    report = {"ok": True, "replica": "disk", "generation": 7, "documents": 3, "vectors": 9, "age_seconds": 12.5,
              "restore_seconds": 0.25, "queries": 9, "agreement": 1.0}
    markdown = drill_markdown(report)
    assert markdown.startswith("# Store drill: ok") and "| age_seconds | 12.5 |" in markdown
    assert json.loads(markdown.split("```json\n")[1].split("\n```")[0]) == report
    failed = drill_markdown({"ok": False, "replica": None, "error": "drill: replica 'disk' holds no | generation"})
    assert failed.startswith("# Store drill: FAILED") and "holds no \\| generation" in failed


@pytest.mark.slow
def test_the_drill_flow_returns_the_report_and_fails_when_the_replica_is_damaged(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from vectormill.flows.drill_flow import DrillFailed, store_drill

    config, counts = replicated_store(tmp_path)
    assert run_cli(tmp_path, config, ["store", "drill"]).exit_code == 0  # and writes the config file
    config_file = str(tmp_path / "vectormill.toml")

    def published() -> str:
        with get_client(sync_client=True) as client:
            chosen = ArtifactFilter(key=ArtifactFilterKey(any_=["store-drill"]))
            [artifact] = client.read_artifacts(artifact_filter=chosen, sort="CREATED_DESC", limit=1)
        return artifact.data

    report = store_drill(config_file=config_file)
    assert report["ok"] and report["vectors"] == counts["vectors"] and report["agreement"] == 1.0
    assert report["scrub"]["ok"] and report["scrub"]["replicas"][0]["files"] >= 4  # every file the replica holds, read
    assert published().startswith("# Store drill: ok") and '"scrub"' in published()
    for segment in (tmp_path / "replica" / "segments").glob("*.rows"):
        segment.unlink()
    with pytest.raises(DrillFailed, match="does not restore"):
        store_drill(config_file=config_file, replica="disk")
    assert published().startswith("# Store drill: FAILED")


def test_a_trained_factory_counts_agreement(tmp_path):
    config, counts = replicated_store(tmp_path, batches=60, index_factory="IVF2,Flat", train_vectors=16)
    report = drill(config)
    assert not report["exact"] and report["required_agreement"] < 1.0
    assert report["ok"] and report["agreement"] >= report["required_agreement"]
    assert report["vectors"] == counts["vectors"]


@pytest.mark.slow
def test_a_drill_killed_at_any_step_changes_neither_the_primary_nor_the_replica(tmp_path):
    """SIGKILL at each file the drill writes in its temporary folder: the primary and the replica stay byte for byte
    what they were (a killed drill leaves only its temporary folder behind)."""
    from .test_store_crash import kill_at_every_file_event

    config, _ = replicated_store(tmp_path, batches=8)
    replica = tmp_path / "replica"
    before = hashes(config.path), hashes(replica)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    body = (f"import tempfile\ntempfile.tempdir = {str(scratch)!r}\n"
            "from vectormill.stores.drill import drill\nfrom vectormill.stores.settings import StoreSettings\n"
            f"assert drill(StoreSettings.model_validate_json({config.model_dump_json()!r}))['ok']")

    def untouched() -> str:
        assert (hashes(config.path), hashes(replica)) == before
        return "untouched"

    def clear_scratch() -> None:  # each run's kill points are its own file events, not a sweep of the last one's
        shutil.rmtree(scratch)
        scratch.mkdir()

    outcomes = kill_at_every_file_event(tmp_path, scratch, body, clear_scratch, untouched)
    assert outcomes["untouched"] > 5 and list(outcomes)[-1] == "completed: untouched", outcomes


def test_a_drill_removes_the_folders_of_killed_drills_and_keeps_those_of_running_ones(tmp_path, monkeypatch):
    config, _ = replicated_store(tmp_path, batches=2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / "scratch" / f"vectormill-drill-{int(gone.stdout)}-x1" / "store"
    running = tmp_path / "scratch" / f"vectormill-drill-{os.getpid()}-x2" / "store"
    for folder in (killed, running):
        folder.mkdir(parents=True)
        (folder / "catalog.sqlite").write_bytes(b"left by a drill")
    assert drill(config)["ok"]
    assert not killed.parent.exists() and running.exists()
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == [running.parent.name]
