"""A store written by vectormill before segments opens: migrated in place on the first writable open, with one line
saying so; its old write-ahead log is read, never truncated, and damage in its middle stops the migration."""

import json

import pytest
from typer.testing import CliRunner

from vectormill.stores.faiss_store import FaissStore, StoreCorruptError, StoreError
from vectormill.stores.restore import verify_store
from vectormill.stores.settings import StoreSettings

from .servers.legacy_store import HEADER, MAGIC, records_of, write_legacy_store
from .servers.store_batches import DIMENSION, batch, vector_for
from .test_store import assert_holds, damage

BATCHES, CHECKPOINTED = 30, 20


@pytest.fixture
def legacy(tmp_path):
    config = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    write_legacy_store(config.path, [batch(i) for i in range(BATCHES)], CHECKPOINTED, DIMENSION)
    return config


def old_files(config):
    return {str(p.relative_to(config.path)): p.read_bytes() for p in config.path.rglob("*")
            if p.is_file() and p.name != "LOCK"}


def test_readers_are_told_the_command_that_migrates(legacy):
    with pytest.raises(StoreError, match=r"older vectormill .*run `vectormill store compact` once to migrate it"):
        FaissStore.open(legacy, writable=False)
    assert not verify_store(legacy)["ok"]


def test_the_first_writable_open_migrates_in_place_with_one_line(legacy):
    before = old_files(legacy)
    with FaissStore.open(legacy, model="test-model", dimension=DIMENSION) as store:
        assert len(store.notes) == 1
        assert store.notes[0].startswith(f"migrated store {str(legacy.path)!r} in place")
        assert "generation 1, 10 write(s) replayed from its log" in store.notes[0] and "\n" not in store.notes[0]
        assert_holds(store, BATCHES)
        assert store.generation == 2 and store.lsn == BATCHES  # numbered after the old generations
        store.write(batch(BATCHES))
    moved = next((legacy.path / "quarantine").glob("legacy-*"))
    assert {str(p.relative_to(moved)): p.read_bytes() for p in moved.rglob("*") if p.is_file()} == {
        name: data for name, data in before.items() if name != "identity.json"}  # set aside untouched
    assert json.loads((legacy.path / "identity.json").read_text())["format"] == 2
    with FaissStore.open(legacy, writable=False) as store:
        assert store.notes == []
        assert_holds(store, BATCHES + 1)
        assert store.search(vector_for("d29 chunk 0 v1"), k=1)[0].document == "d29"
    assert verify_store(legacy)["ok"]


def test_store_compact_migrates_from_the_command_line(legacy, tmp_path):
    from vectormill.cli.main import app

    config_file = tmp_path / "vectormill.toml"
    config_file.write_text(f'[store]\npath = "{legacy.path}"\n\n[[sources]]\nname = "docs"\ntype = "filesystem"\n'
                           f'root = "{tmp_path}"\n')
    result = CliRunner().invoke(app, ["store", "compact", "--json", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "migrated store" in result.stderr
    assert json.loads(result.stdout)["vectors"] == FaissStore.open(legacy, writable=False).vector_count()


def test_a_torn_write_at_the_end_of_the_old_log_is_dropped(legacy):
    newest = sorted((legacy.path / "wal").glob("*.wal"))[-1]
    newest.write_bytes(newest.read_bytes()[:-3])  # the last write was cut short: never acknowledged
    with FaissStore.open(legacy, model="test-model", dimension=DIMENSION) as store:
        assert "torn write at the end of the log dropped" in store.notes[0]
        assert_holds(store, BATCHES - 1)


@pytest.mark.parametrize("where", ["length field", "payload", "older file"])
def test_damage_in_the_middle_of_the_old_log_stops_the_migration_and_truncates_nothing(legacy, where):
    """A damaged length field used to read as a torn tail, and the log was cut there, losing the writes after it."""
    files = sorted((legacy.path / "wal").glob("*.wal"))
    segment = files[0] if where == "older file" else files[-1]
    data = bytearray(segment.read_bytes())
    offset, length = records_of(segment)[len(records_of(segment)) // 2]
    if where == "length field":
        data[offset + 8 : offset + 12] = (1 << 30).to_bytes(4, "little")  # reads as a record running past the end
    elif where == "payload":
        data[offset + HEADER.size + 5] ^= 0x10
    else:
        data = data[: offset + length // 2]  # an older file cut short: newer files follow it
    segment.write_bytes(bytes(data))
    before = old_files(legacy)
    with pytest.raises(StoreCorruptError, match="cannot be migrated") as error:
        FaissStore.open(legacy, model="test-model", dimension=DIMENSION)
    assert "Nothing was changed" in str(error.value)
    assert old_files(legacy) == before  # the log is as it was: not truncated, not moved


def test_a_damaged_old_generation_is_skipped_when_the_log_reaches_back(legacy):
    damage(legacy.path / "generations" / "00000001" / "index.faiss", "bitflip")
    with FaissStore.open(legacy, model="test-model", dimension=DIMENSION) as store:
        assert "no generation, 30 write(s) replayed" in store.notes[0] and "00000001" in store.notes[0]
        assert_holds(store, BATCHES)


def test_a_log_that_does_not_reach_the_newest_valid_generation_is_refused(tmp_path):
    config = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    write_legacy_store(config.path, [batch(i) for i in range(BATCHES)], CHECKPOINTED, DIMENSION)
    damage(config.path / "generations" / "00000001" / "meta.sqlite", "truncate")
    (config.path / "wal" / f"{1:016d}.wal").unlink()  # the old writer pruned the log back to generation 1
    with pytest.raises(StoreCorruptError, match="writes in between are missing"):
        FaissStore.open(config, model="test-model", dimension=DIMENSION)
    assert (config.path / "wal" / f"{CHECKPOINTED + 1:016d}.wal").read_bytes().startswith(MAGIC)
