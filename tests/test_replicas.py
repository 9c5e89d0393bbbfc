"""Replicas through fsspec: a local folder and S3 on a real moto server; verify, restore, disaster recovery."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.replicas import Location
from vectormill.stores.restore import restore_store, verify_store
from vectormill.stores.settings import StoreSettings

from .servers.processes import free_port
from .servers.s3 import s3_server  # noqa: F401 - fixture
from .servers.store_batches import DIMENSION, batch, vector_for
from .test_store import assert_holds, current_files, damage

pytestmark = pytest.mark.slow  # a moto server start and S3 round trips: ~15 s in all


def replicated(tmp_path, server, bucket, **overrides):
    values = dict(
        path=tmp_path / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None, keep_generations=2,
        min_replicas_confirmed=2, replica_attempts=3, replica_backoff_seconds=0.05,
        replicas=[{"name": "disk", "url": str(tmp_path / "replica")},
                  {"name": "s3", "url": f"s3://{bucket}/vectormill", "storage_options": server.storage_options()}])
    values.update(overrides)
    return StoreSettings(**values)


def build(config, checkpoints):
    """Write 10 batches per checkpoint; returns {generation: batches it holds}."""
    held = {}
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        for n in range(checkpoints):
            for i in range(n * 10, n * 10 + 10):
                store.write(batch(i))
            held[store.checkpoint()] = n * 10 + 10
            assert store.replication_problem() is None, store.stats()["replicas"]
    return held


def test_checkpoints_reach_both_replicas_with_only_the_new_files_and_verify(tmp_path, s3_server):
    config = replicated(tmp_path, s3_server, "verify")
    held = build(config, 3)
    newest = max(held)
    with FaissStore.open(config, writable=False) as store:
        generations = store.stats()["generations"]
        shared = current_files(store, ".faiss")[0]  # sealed by the first checkpoint, named by every generation
    report = verify_store(config)
    assert report["ok"], report["problems"]
    where = {(g["where"], g["generation"]) for g in report["generations"]}
    assert where == {(w, g) for w in ("primary", "disk", "s3") for g in (newest, newest - 1)}  # K = 2 everywhere

    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        store.write(batch(30))
        generation = store.checkpoint()
        sent = {s["name"]: s for s in store.stats()["replicas"]}
        new_bytes = store.stats()["generations"][0]["new_bytes"]
    manifest = (config.path / "manifests" / f"{generation:08d}.json").stat().st_size
    for name in ("disk", "s3"):  # a checkpoint sends the new segment's two files and the manifest, nothing else
        assert (sent[name]["files_sent"], sent[name]["bytes_sent"]) == (3, new_bytes + manifest)
    assert new_bytes < generations[0]["bytes"] / 2

    # A damaged replica file is named once, though two generations name it; the CLI exits 1 with the same JSON.
    s3 = Location.replica(config.replicas[1])
    s3.fs.pipe_file(s3.path("segments", shared), b"not the file")
    report = verify_store(config)
    assert not report["ok"]
    assert report["problems"] == [{"where": "s3", "file": f"segments/{shared}", "detail": report["problems"][0]["detail"]}]
    assert "size" in report["problems"][0]["detail"]
    assert [g["ok"] for g in report["generations"] if g["where"] == "s3"] == [False, False]
    result = run_cli(tmp_path, config, ["store", "verify", "--json"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert json.loads(result.stdout)["problems"] == report["problems"]


def test_s3_stopped_mid_copy_is_retried_then_reported_and_the_primary_stays_intact(tmp_path, s3_server):
    config = replicated(tmp_path, s3_server, "outage")
    build(config, 1)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        for i in range(10, 20):
            store.write(batch(i))
        copied = []

        def stop_server_after_first_file(replica, generation, file):
            copied.append((replica, file))
            if replica == "s3" and len(copied) == 1 + 3:  # disk: 2 segment files and the manifest, then s3's first
                s3_server.stop()

        store.replicator.on_copied = stop_server_after_first_file
        try:
            generation = store.checkpoint()
        finally:
            store.replicator.on_copied = None
            s3_server.start()  # an empty server again: moto keeps state in memory
        statuses = {s["name"]: s for s in store.stats()["replicas"]}
        assert statuses["disk"]["ok"] and statuses["disk"]["generation"] == generation
        assert statuses["s3"]["ok"] is False and statuses["s3"]["attempts"] >= 3 + 1
        assert f"generation {generation} not confirmed after" in statuses["s3"]["error"]
        problem = store.replication_problem()
        assert "only 1 of 2 replica(s) confirmed" in problem and "primary store is intact" in problem
        assert any("replica 's3'" in note for note in store.notes)
        assert verify_store(StoreSettings(path=config.path))["ok"]
        assert_holds(store, 20)

        assert store.checkpoint() is None  # nothing new: the newest generation is offered again, in full to s3
        assert store.replication_problem() is None
    assert verify_store(config)["ok"]


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_primary_segment_comes_back_from_a_replica(tmp_path, s3_server, how):
    config = replicated(tmp_path, s3_server, f"heal-{how}", keep_generations=1)
    held = build(config, 2)
    newest = max(held)
    with FaissStore.open(config, writable=False) as store:
        victim = current_files(store, ".faiss")[-1]
    damage(config.path / "segments" / victim, how)
    assert not verify_store(config)["ok"]
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        assert "CORRUPT SEGMENT FILE" in store.notes[0] and "fetched from replica 'disk'" in store.notes[0]
        assert store.generation == newest  # the identical file is back: no new generation needed
        assert_holds(store, held[newest])
    assert verify_store(config)["ok"]  # the damaged copy is in quarantine/, the replica's in its place


def test_restoring_generation_g_gives_back_exactly_g(tmp_path, s3_server):
    config = replicated(tmp_path, s3_server, "restore", keep_generations=3)
    held = build(config, 3)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        store.write(batch(30))  # acknowledged, after the last checkpoint
    oldest = min(held)
    result = run_cli(tmp_path, config, ["store", "restore", "--from", "s3", "--generation", str(oldest), "--json"])
    assert result.exit_code == 0, result.output
    restored = json.loads(result.stdout)
    assert (restored["restored_generation"], restored["from"]) == (oldest, "s3")
    assert restored["log"].startswith("moved to quarantine")
    with FaissStore.open(config, writable=False) as store:
        assert_holds(store, held[oldest])
        assert store.generation == restored["as_generation"] > max(held)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        store.write(batch(held[oldest]))  # the store goes on from G
        assert_holds(store, held[oldest] + 1)
        store.checkpoint()
        assert store.replication_problem() is None
    assert verify_store(config)["ok"]


def test_a_lost_primary_is_restored_whole_not_recreated(tmp_path, s3_server):
    config = replicated(tmp_path, s3_server, "lost")
    held = build(config, 2)
    shutil.rmtree(config.path)
    with pytest.raises(StoreError, match="store restore --from disk"):
        FaissStore.open(config, model="test-model", dimension=DIMENSION)
    result = restore_store(config, source="s3")
    assert result["restored_generation"] == max(held)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        assert_holds(store, held[max(held)])  # raw vectors, ids, documents and cursors
        assert store.model == "test-model"
        hit = store.search(vector_for("d19 chunk 0 v1"), k=1)[0]
        assert (hit.document, hit.text, hit.location) == ("d19", "d19 chunk 0 v1", "d19.txt")


def test_replica_credentials_never_reach_verify_or_restore_output(tmp_path):
    """The user:password of a replica URL and its secret storage options are masked, as the HTTP sources mask theirs."""
    url = f"ftp://backup-user:hunter2@127.0.0.1:{free_port()}/vectormill"  # nothing listens: refused at once
    config = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None, min_replicas_confirmed=0,
                           replica_attempts=1, replica_backoff_seconds=0.01,
                           replicas=[{"name": "offsite", "url": url, "storage_options": {"timeout": 2}}])
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        store.write(batch(0))
        store.checkpoint()
        statuses = store.stats()["replicas"]
    assert statuses[0]["ok"] is False and "hunter2" not in json.dumps(statuses)
    for args in (["store", "verify", "--json"], ["store", "verify"],
                 ["store", "restore", "--from", "offsite", "--generation", "1"]):
        result = run_cli(tmp_path, config, args)
        shown = result.output + str(result.exception or "")  # a UserError is printed by main(), as one line
        assert result.exit_code == 1, shown
        assert "hunter2" not in shown and "backup-user" not in shown and "offsite" in shown
        assert "ftp://127.0.0.1" in shown  # where it is, without who


def toml_value(value):
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and booleans read the same in TOML


def run_cli(tmp_path, config, args):
    from vectormill.cli.main import app
    config_file = tmp_path / "vectormill.toml"
    replicas = "".join(
        f'\n[[store.replicas]]\nname = "{r.name}"\nurl = "{r.url}"\nstorage_options = {toml_value(r.storage_options)}\n'
        for r in config.replicas)
    config_file.write_text(
        f'[store]\npath = "{config.path}"\nmin_replicas_confirmed = {config.min_replicas_confirmed}\n'
        f'keep_generations = {config.keep_generations}\nreplica_attempts = 2\nreplica_backoff_seconds = 0.05\n'
        f'{replicas}\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "{tmp_path}"\n')
    return CliRunner().invoke(app, [*args, "--config", str(config_file)])
