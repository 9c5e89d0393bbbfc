"""Issue 19's acceptance runs: a replica that damages or drops one upload in five, under many checkpoints with
writes and deletions; then the primary is lost, and `store restore --from` that replica must give back exactly the
newest generation the replica confirmed, and `store drill` must agree. Once on a local folder, once on S3 (moto)."""

import shutil

import pytest

from vectormill.stores.drill import drill
from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.replicas import Location
from vectormill.stores.restore import restore_store, verify_store
from vectormill.stores.settings import StoreSettings

from .servers.faulty_fs import register
from .servers.s3 import s3_server  # noqa: F401 - fixture
from .servers.store_batches import SOURCE
from .test_store import assert_holds, current_files, open_store, write_batches

BATCHES_PER_CHECKPOINT = 2  # batch i deletes a document every 7th batch: deletions reach most generations


def faulty_settings(tmp_path, url: str, storage_options: dict) -> StoreSettings:
    """One replica, tried once per file: a damaged upload fails its checkpoint there instead of being retried away."""
    return StoreSettings(path=tmp_path / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                         keep_generations=2, replica_attempts=1, replica_backoff_seconds=0.01,
                         replicas=[{"name": "offsite", "url": url, "storage_options": storage_options}])


def state(store: FaissStore) -> tuple[dict[str, str], list[str]]:
    """What a generation holds, as a reader sees it: document versions and chunk ids."""
    return store.document_versions(SOURCE), sorted(store.chunk_vectors())


def checkpoint_under_faults(config: StoreSettings, checkpoints: int) -> tuple[list[int | None], dict[int, tuple]]:
    """Write, checkpoint, and record after each checkpoint the generation the replica reports as confirmed.

    Returns (confirmed after each checkpoint, {generation: (batches written, state)})."""
    confirmed: list[int | None] = []
    held: dict[int, tuple] = {}
    with open_store(config) as store:
        for n in range(checkpoints):
            write_batches(store, n * BATCHES_PER_CHECKPOINT, (n + 1) * BATCHES_PER_CHECKPOINT)
            generation = store.checkpoint()
            held[generation] = ((n + 1) * BATCHES_PER_CHECKPOINT, state(store))
            [replica] = store.stats()["replicas"]
            confirmed.append(replica["generation"] if replica["ok"] else None)
            if replica["ok"]:
                assert replica["generation"] == generation  # a replica confirms the newest or nothing
    return confirmed, held


def restore_lost_primary(config: StoreSettings, confirmed: list[int | None], held: dict[int, tuple]) -> int:
    """Delete the primary, restore it from the replica; assert it holds exactly the newest confirmed generation and
    the drill agrees. Returns that generation."""
    newest = max(g for g in confirmed if g is not None)
    shutil.rmtree(config.path)
    with pytest.raises(StoreError, match="store restore --from offsite"):
        open_store(config)
    restored = restore_store(config, source="offsite")
    assert (restored["restored_generation"], restored["from"]) == (newest, "offsite")
    count, recorded = held[newest]
    with FaissStore.open(config, writable=False) as store:
        assert state(store) == recorded
        assert_holds(store, count)  # and the vectors, ids and cursor of exactly those batches
    assert verify_store(config.model_copy(update={"replicas": ()}))["ok"]

    report = drill(config, "offsite")
    assert report["ok"] and report["generation"] == newest and report["exact"] and report["agreement"] == 1.0
    assert (report["documents"], report["vectors"]) == (len(recorded[0]), len(recorded[1]))
    return newest


def test_a_replica_dropping_or_damaging_one_upload_in_five_restores_its_newest_confirmed_generation(tmp_path):
    register()
    config = faulty_settings(tmp_path, f"faulty://{tmp_path / 'replica'}", {"seed": 19, "every": 5})
    confirmed, held = checkpoint_under_faults(config, 50)
    faults = Location.replica(config.replicas[0]).fs.log
    assert {fault for _, fault in faults} == {"corrupt", "truncate", "drop"}, faults
    missed = confirmed.count(None)
    assert 5 <= missed < 45, confirmed  # faults failed some checkpoints there, and the replica caught up after
    newest = restore_lost_primary(config, confirmed, held)
    print(f"{len(faults)} faults, {missed} of 50 checkpoints unconfirmed, restored generation {newest} "
          f"of {max(held)}")


@pytest.mark.slow  # a moto server start: seconds to a minute on a loaded machine
def test_an_s3_replica_dropping_or_damaging_one_upload_in_five_restores_its_newest_confirmed_generation(
        tmp_path, s3_server):
    register()
    options = s3_server.storage_options()
    del options["skip_instance_cache"]  # one instance for the whole run: the seeded faults run on across checkpoints
    config = faulty_settings(tmp_path, "faultys3://acceptance/vectormill", {**options, "seed": 19, "every": 5})
    confirmed, held = checkpoint_under_faults(config, 20)
    faults = Location.replica(config.replicas[0]).fs.log
    missed = confirmed.count(None)
    assert faults and 1 <= missed < 20, (faults, confirmed)
    newest = restore_lost_primary(config, confirmed, held)
    print(f"{len(faults)} faults, {missed} of 20 checkpoints unconfirmed, restored generation {newest} "
          f"of {max(held)}")


@pytest.mark.slow  # ~25 processes started and killed
def test_verify_repair_killed_at_any_step_loses_nothing_and_a_second_repair_verifies(tmp_path):
    """SIGKILL `vectormill store verify --repair` (a real process) at each file it changes, with work on both sides: a
    replica that lacks a segment file and holds a manifest damaged and a file that only that manifest names, and a
    primary segment file damaged. After each kill every acknowledged write is still there, and a second `--repair`
    makes `verify` pass; the run that completes repairs it all in one go (exit 0), the file behind the manifest too.
    (A drill killed at each of its file events: tests/test_store_drill.py.)"""
    from .test_replicas import run_cli
    from .test_store_crash import kill_at_every_file_event

    built = tmp_path / "built"
    config = StoreSettings(path=built / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                           keep_generations=2, replicas=[{"name": "disk", "url": str(built / "replica")}])
    with open_store(config) as store:
        for n in range(3):
            write_batches(store, n * 6, n * 6 + 6)
            store.checkpoint()
        assert store.replication_problem() is None
        write_batches(store, 18, 22)  # acknowledged after the last checkpoint: only the database holds these
        faiss, rows = current_files(store, ".faiss"), current_files(store, ".rows")
    replica = built / "replica"
    (replica / "segments" / faiss[0]).unlink()  # shared by both kept generations
    data = bytearray((replica / "segments" / faiss[-1]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (replica / "segments" / faiss[-1]).write_bytes(bytes(data))  # named only by the newest generation, whose
    newest_manifest = replica / "manifests" / max(p.name for p in (replica / "manifests").iterdir())
    newest_manifest.write_bytes(newest_manifest.read_bytes()[:-9])  # manifest is damaged: found once it is copied
    victim = config.path / "segments" / rows[0]
    victim.write_bytes(victim.read_bytes()[:-7])  # the replica holds this one intact
    damaged = verify_store(config)
    assert {p["where"] for p in damaged["problems"]} == {"primary", "disk"} and len(damaged["problems"]) == 3

    work = tmp_path / "work"
    live = config.model_copy(update={"path": work / "store", "replicas": StoreSettings(
        replicas=[{"name": "disk", "url": str(work / "replica")}]).replicas})
    run_cli(tmp_path, live, ["store", "verify"])  # writes tmp_path/vectormill.toml for the killed process
    config_file = tmp_path / "vectormill.toml"

    def reset():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(built, work)

    body = ("from vectormill.cli.main import main\n"
            f"sys.argv = ['vectormill', 'store', 'verify', '--repair', '--config', {str(config_file)!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n")

    def check() -> str:
        with FaissStore.open(live, writable=False) as store:
            assert_holds(store, 22)  # checkpointed or only written: nothing acknowledged is lost
        left = verify_store(live)
        repaired = run_cli(tmp_path, live, ["store", "verify", "--repair"])
        assert repaired.exit_code == 0, repaired.output
        report = verify_store(live)
        assert report["ok"], report["problems"]
        with FaissStore.open(live, writable=False) as store:
            assert_holds(store, 22)
        return "repaired before" if left["ok"] else "repaired after"

    outcomes = kill_at_every_file_event(tmp_path, work, body, reset, check)
    print(f"verify --repair killed at each file event: {outcomes}")
    assert outcomes.get("repaired after", 0) >= 3 and list(outcomes)[-1] == "completed: repaired before", outcomes
