"""The FAISS store on real files: durable writes, segments and generations, damaged files, the writer lock, factories."""

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from pydantic import ValidationError

from .servers.store_batches import DIMENSION, SOURCE, batch, chunk_text, expected_after, upsert, vector_for
from vectormill.stores.faiss_store import FaissStore, StoreCorruptError, StoreError, faiss_id
from vectormill.stores.lock import StoreLockedError
from vectormill.stores.records import CursorUpdate, DocumentDelete, DocumentFailed, DocumentUpsert, PropertyUpdate
from vectormill.stores.restore import restore_store, verify_store
from vectormill.stores.settings import StoreSettings


def settings(tmp_path, **overrides):
    values = dict(path=tmp_path / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                  keep_generations=2)
    values.update(overrides)
    return StoreSettings(**values)


def open_store(config, **kwargs):
    return FaissStore.open(config, model="test-model", dimension=DIMENSION, **kwargs)


def write_batches(store, start, stop):
    for i in range(start, stop):
        store.write(batch(i))


def assert_holds(store, count):
    """The store holds exactly batches 0 … count-1: versions, vectors, and the same live ids in its segments."""
    versions, vectors = expected_after(count)
    assert store.document_versions(SOURCE) == versions
    stored = store.chunk_vectors()
    assert sorted(stored) == sorted(vectors)
    for chunk_id, vector in vectors.items():
        np.testing.assert_array_equal(stored[chunk_id], vector)
    assert store.index_ids() == sorted(faiss_id(c) for c in vectors)
    assert store.vector_count() == len(vectors) and store.document_count() == len(versions)
    assert store.cursor(SOURCE) == (str(count - 1) if count else None)


def segment_files(config):
    return {p.name: p.stat().st_mtime_ns for p in (config.path / "segments").iterdir()}


def current_files(store, suffix):
    """The current generation's segment files of one kind, oldest segment first."""
    return [entry.name for segment in current_segments(store) for entry in segment.files if entry.name.endswith(suffix)]


def current_segments(store):
    from vectormill.stores.generations import current_manifest
    from vectormill.stores.manifest import segments_of

    return segments_of(current_manifest(store.catalog))


def test_acknowledged_writes_are_there_without_a_checkpoint(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 30)
        assert_holds(store, 30)
    with FaissStore.open(config, writable=False) as store:
        assert store.generation == 0 and store.lsn == 30
        assert_holds(store, 30)
        hit = store.search(vector_for("d29 chunk 0 v1"), k=1)[0]
        assert (hit.document, hit.text) == ("d29", "d29 chunk 0 v1")
    assert not (config.path / "wal").exists()  # SQLite's own log is the write-ahead log


def test_a_checkpoint_writes_only_what_changed_and_generations_share_the_rest(tmp_path):
    config = settings(tmp_path, merge_factor=50)
    with open_store(config) as store:
        write_batches(store, 0, 200)
        first = store.checkpoint()
        before = segment_files(config)
        store.write([upsert("d3", 7, 1 + 3 % 3), CursorUpdate(SOURCE, "change")])  # one document changes
        second = store.checkpoint()
        after = segment_files(config)
        generations = store.stats()["generations"]
    assert second == first + 1 and [g["generation"] for g in generations] == [second, first]
    assert all(after[name] == mtime for name, mtime in before.items())  # nothing sealed before is rewritten
    new = set(after) - set(before)
    assert len(new) == 2 and {name.rsplit(".", 1)[1] for name in new} == {"faiss", "rows"}
    assert generations[0]["new_bytes"] == sum((config.path / "segments" / n).stat().st_size for n in new)
    assert generations[0]["new_bytes"] < generations[1]["bytes"] / 4  # the change, not the store
    assert generations[0]["bytes"] == generations[1]["bytes"] + generations[0]["new_bytes"]  # shared, not copied
    with FaissStore.open(config, writable=False) as store:
        assert store.document_versions(SOURCE)["d3"] == "v7"
        assert store.search(upsert("d3", 7, 1).vectors[0], k=1)[0].document == "d3"
        old = upsert("d3", 1, 1).vectors[0]  # replaced: its copy in the older segment is a tombstone
        assert all(hit.chunk_id != upsert("d3", 1, 1).chunks[0].chunk_id for hit in store.search(old, k=50))
        assert store.stats()["dead"] == 1


def test_checkpoints_keep_k_generations_and_prune_only_unnamed_files(tmp_path):
    config = settings(tmp_path, checkpoint_every_vectors=15, merge_factor=3)
    with open_store(config) as store:
        write_batches(store, 0, 40)
        store.checkpoint()
        stats = store.stats()
        named = {e.name for g in store.catalog.manifests() for e in _files(g[1])}
    kept = stats["generations"]  # the last two checkpoints (one that merged left one generation)
    assert len(kept) == 2 and kept[0]["generation"] == stats["generation"] and kept[0]["lsn"] > kept[1]["lsn"]
    assert stats["generation"] >= 4
    assert set(segment_files(config)) == named  # every kept generation's files, and nothing else
    assert sorted(p.name for p in (config.path / "manifests").iterdir()) == [
        f"{g['generation']:08d}.json" for g in reversed(stats["generations"])]
    with open_store(config) as store:
        assert_holds(store, 40)
        assert store.notes == []


def test_keep_generations_counts_checkpoints_when_a_checkpoint_seals_and_merges(tmp_path):
    config = settings(tmp_path, merge_factor=2, keep_generations=3)  # every other checkpoint merges two segments
    numbers = []
    with open_store(config) as store:
        for checkpoint in range(6):
            before = store.generation
            write_batches(store, checkpoint * 10, checkpoint * 10 + 10)
            numbers.append((before, store.checkpoint()))
        kept = store.generations_info()
        named = {e.name for g in store.catalog.manifests() for e in _files(g[1])}
    assert any(after - before == 2 for before, after in numbers)  # a checkpoint committed a seal, then a merge
    assert [g["lsn"] for g in kept] == [60, 50, 40]  # the last three checkpoints, one generation each
    assert [g["generation"] for g in kept] == [after for _, after in numbers[-3:]][::-1]
    assert set(segment_files(config)) == named
    assert sorted(p.name for p in (config.path / "manifests").iterdir()) == [
        f"{g['generation']:08d}.json" for g in reversed(kept)]
    assert verify_store(config)["ok"]
    restore_store(config, generation=kept[-1]["generation"])  # the oldest kept checkpoint restores
    with open_store(config) as store:
        assert_holds(store, 40)


def _files(manifest_bytes):
    from vectormill.stores.manifest import files_of, parse_manifest

    return files_of(parse_manifest(manifest_bytes)).values()


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
@pytest.mark.parametrize("kind", [".faiss", ".rows"])
def test_a_damaged_segment_file_is_searched_from_the_database_then_rebuilt(tmp_path, how, kind):
    config = settings(tmp_path, merge_factor=50)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
        write_batches(store, 10, 20)
        newest = store.checkpoint()
        write_batches(store, 20, 25)
        victim = current_files(store, kind)[-1]
    damage(config.path / "segments" / victim, how)
    with FaissStore.open(config, writable=False) as store:  # a reader copes, and moves nothing
        assert_holds(store, 25)
        assert "CORRUPT SEGMENT FILE" in store.notes[0] and victim in store.notes[0]
        assert store.search(vector_for("d15 chunk 0 v1"), k=1)[0].document == "d15"
    assert (config.path / "segments" / victim).exists()
    with open_store(config) as store:
        assert_holds(store, 25)
        assert "CORRUPT SEGMENT FILE" in store.notes[0] and "rebuilt from the database" in store.notes[0]
        assert store.generation == newest + 1 and victim not in current_files(store, kind)
        assert store.checkpoint() == newest + 2
    assert list((config.path / "quarantine").glob(f"damaged-*/{victim}"))
    assert verify_store(config)["ok"], verify_store(config)["problems"]
    with open_store(config) as store:
        assert store.notes == []
        assert_holds(store, 25)


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_a_damaged_manifest_file_is_reported_and_rewritten_from_the_database(tmp_path, how):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        newest = store.checkpoint()
    manifest = config.path / "manifests" / f"{newest:08d}.json"
    damage(manifest, how)
    assert [p["file"] for p in verify_store(config)["problems"]][:1] == [f"manifests/{newest:08d}.json"]
    with FaissStore.open(config, writable=False) as store:  # readers take the database's copy
        assert_holds(store, 10)
    with open_store(config) as store:
        assert "rewritten from it" in store.notes[0]
        assert_holds(store, 10)
    assert verify_store(config)["ok"]


def test_a_damaged_database_is_refused_then_restored_from_the_newest_generation(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        newest = store.checkpoint()
        write_batches(store, 10, 12)  # acknowledged, after the checkpoint: in the database only
    database = config.path / "store.sqlite"
    database.write_bytes(b"\0" * 100 + database.read_bytes()[100:])  # SQLite's header is gone
    with pytest.raises(StoreCorruptError) as error:
        FaissStore.open(config, writable=False)
    assert "store.sqlite is damaged" in str(error.value) and "store restore" in str(error.value)
    assert not verify_store(config)["ok"]
    result = restore_store(config)
    assert (result["restored_generation"], result["from"]) == (newest, "primary")
    assert result["log"].startswith("lost after generation") and result["as_generation"] == newest + 1
    with open_store(config) as store:
        assert_holds(store, 10)
    assert list((config.path / "quarantine").glob("restore-*/store.sqlite"))


def test_a_second_writer_is_refused_in_this_process_and_from_another(tmp_path):
    config = settings(tmp_path)
    with open_store(config):
        with pytest.raises(StoreLockedError, match="already open for writing"):
            open_store(config)
        script = ("import sys\nfrom vectormill.stores.faiss_store import FaissStore\n"
                  "from vectormill.stores.settings import StoreSettings\n"
                  f"FaissStore.open(StoreSettings(path={str(config.path)!r}), model='test-model', dimension=8)\n")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "already open for writing by another process" in result.stderr
        with FaissStore.open(config, writable=False) as reader:  # readers are not locked out
            assert reader.lsn == 0
    with open_store(config) as store:  # released on close
        store.write(batch(0))


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        store.write(batch(0))
        good = upsert("dup", 1, 2)
        twins = type(good)(**{**good.__dict__, "chunks": (good.chunks[0], good.chunks[0])})
        with pytest.raises(StoreError, match="share a chunk id"):
            store.write([twins])
        stolen = type(good)(**{**good.__dict__, "chunks": batch(0)[0].chunks, "vectors": batch(0)[0].vectors})
        with pytest.raises(StoreError, match="already stored for s/d0"):
            store.write([stolen])
        nan = type(good)(**{**good.__dict__, "vectors": np.full((2, DIMENSION), np.nan, dtype=np.float32)})
        with pytest.raises(StoreError, match="NaN"):
            store.write([nan])
        assert store.lsn == 1
        store.write(batch(1))  # refused input does not make the store unusable
    with open_store(config) as store:
        assert_holds(store, 2)


def test_a_failed_write_makes_the_store_unusable_until_it_is_opened_again(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 3)
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow: as with a full disk
        with pytest.raises(Exception, match="full"):
            write_batches(store, 3, 40)
        written = store.lsn  # batches 0 … written-1 are acknowledged; batch `written` failed
        store.db.execute("PRAGMA max_page_count = 1073741823")  # room again, but this object may be wrong now
        with pytest.raises(StoreError, match="open it again"):
            store.write(batch(written))
        with pytest.raises(StoreError, match="open it again"):
            store.checkpoint()
    with open_store(config) as store:
        assert store.lsn == written
        assert_holds(store, written)
        write_batches(store, written, written + 2)
        assert store.lsn == written + 2
        assert_holds(store, written + 2)


def test_a_failed_automatic_checkpoint_is_reported_apart_and_the_write_is_acknowledged_once(tmp_path, monkeypatch):
    import errno

    from vectormill.stores import generations

    config = settings(tmp_path, checkpoint_every_vectors=15)
    real_write = generations.write_atomically
    failed = []

    def full_disk_once(path, data):  # the manifest of the first automatic checkpoint: its segment files are written
        if not failed:
            failed.append(path.name)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(generations, "write_atomically", full_disk_once)
    with open_store(config) as store:
        acknowledged = [store.write(batch(i)) for i in range(40)]  # a caller that retries on an error: none came
        assert failed and acknowledged == list(range(1, 41)) and store.lsn == 40
        assert [note for note in store.notes if "automatic checkpoint" in note and "No space left" in note]
        assert store.generation >= 1  # a later automatic checkpoint went through
        assert_holds(store, 40)
        final = store.checkpoint()
        named = {e.name for g in store.catalog.manifests() for e in _files(g[1])}
    assert final > 0 and set(segment_files(config)) == named  # the failed checkpoint's files are gone
    with open_store(config) as store:
        assert_holds(store, 40)
        assert store.notes == []


def test_model_mismatch_and_bad_factory_are_refused(tmp_path):
    with open_store(settings(tmp_path)):
        pass
    with pytest.raises(StoreError, match="holds vectors of model 'test-model'"):
        FaissStore.open(settings(tmp_path), model="other", dimension=DIMENSION)
    with pytest.raises(StoreError, match="not a valid FAISS index factory"):
        open_store(settings(tmp_path / "b", index_factory="NoSuchIndex42"))
    assert not (tmp_path / "b" / "store" / "identity.json").exists()
    # Built fine, but takes no second batch of additions: refused before the first write, not at a checkpoint.
    with pytest.raises(StoreError, match=r"^\[store\] index_factory = 'NSG16,Flat' cannot be checkpointed: .*HNSW32"):
        open_store(settings(tmp_path / "c", index_factory="NSG16,Flat"))
    assert not (tmp_path / "c" / "store" / "identity.json").exists()
    assert not list((tmp_path / "c" / "store").glob(".tmp-*"))


@pytest.mark.parametrize("factory, parameters", [("IVF4,Flat,RFlat", "nprobe=4"), ("Flat,Refine(Flat)", "")])
def test_refined_factories_are_checkpointed_searched_and_verified(tmp_path, factory, parameters):
    config = settings(tmp_path, index_factory=factory, train_vectors=60, search_parameters=parameters, merge_factor=50)
    with open_store(config) as store:
        write_batches(store, 0, 60)
        store.checkpoint()
        write_batches(store, 60, 70)  # replacements and deletions reach into the refined segment
        store.checkpoint()
        assert kinds(store) == ["factory", "flat"]
        assert_holds(store, 70)
    with FaissStore.open(config, writable=False) as store:
        assert_holds(store, 70)
        assert store.search(vector_for("d41 chunk 0 v1"), k=1)[0].document == "d41"
        deleted = upsert("d58", 1, 1 + 58 % 3)  # deleted by batch 62, after its segment was sealed
        assert all(hit.document != "d58" for hit in store.search(deleted.vectors[0], k=50))
    assert verify_store(config)["ok"], verify_store(config)["problems"]


def kinds(store):
    return [segment.kind for segment in current_segments(store)]


def test_ivf_is_built_per_segment_once_a_segment_is_large_enough(tmp_path):
    config = settings(tmp_path, index_factory="IVF4,Flat", train_vectors=60, search_parameters="nprobe=4",
                      merge_factor=50)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
        assert kinds(store) == ["flat"]  # too few vectors to train on: exact meanwhile
        write_batches(store, 10, 60)
        store.checkpoint()
        assert kinds(store) == ["flat", "factory"]
        write_batches(store, 60, 70)  # replacements and deletions reach into both segments
        assert_holds(store, 70)
        result = store.compact()  # one segment, retrained on everything live
        assert kinds(store) == ["factory"] and result["segments_after"] == 1 and result["dead_dropped"] > 0
    with FaissStore.open(config, writable=False) as store:
        assert_holds(store, 70)
        assert store.stats()["dead"] == 0
        assert store.search(vector_for("d66 chunk 0 v1"), k=1)[0].document == "d66"
        index = store._parts()[0].index
        assert faiss.extract_index_ivf(index).nprobe == 4


def test_hnsw_segments_skip_deleted_and_replaced_vectors(tmp_path):
    config = settings(tmp_path, index_factory="HNSW16", train_vectors=20, merge_factor=50)
    with open_store(config) as store:
        write_batches(store, 0, 20)
        store.checkpoint()
        write_batches(store, 20, 30)  # batches 24, 27 … change documents, 20, 27 … delete them
        store.checkpoint()
        assert kinds(store)[0] == "factory"
        assert_holds(store, 30)
        deleted = upsert("d16", 1, 1 + 16 % 3)  # deleted by batch 20, after its segment was sealed
        assert all(hit.document != "d16" for hit in store.search(deleted.vectors[0], k=50))
        store.write([DocumentDelete(SOURCE, "d29")])
        assert all(hit.document != "d29" for hit in store.search(vector_for("d29 chunk 0 v1"), k=5))
    with FaissStore.open(config, writable=False) as store:
        assert "d29" not in store.document_versions(SOURCE)


def test_search_over_segments_equals_one_exact_index_over_the_live_vectors(tmp_path):
    """Deletions and replacements spread over several segments: ids and scores as one exact index gives them."""
    rng = np.random.default_rng(11)
    config = settings(tmp_path, merge_factor=1000, max_dead_ratio=1.0)
    dimension = 16

    def document(name, version, chunks):
        vectors = rng.standard_normal((chunks, dimension)).astype(np.float32)
        records = tuple(dataclasses.replace(upsert(name, version, 1).chunks[0], position=p, text=f"{name} {p} v{version}",
                                            chunk_id=hashlib.sha256(f"{name}/{p}/{version}".encode()).hexdigest()[:32])
                        for p in range(chunks))
        return DocumentUpsert(SOURCE, name, f"v{version}", name, name, None, records, vectors)

    with FaissStore.open(config, model="m", dimension=dimension) as store:
        for round_ in range(6):
            for n in range(25):
                store.write([document(f"r{round_}d{n}", 1, 4)])
            for n in range(0, 25, 3):  # replace documents of earlier rounds, and delete some
                earlier = f"r{rng.integers(0, round_ + 1)}d{n}"
                if n % 2:
                    store.write([DocumentDelete(SOURCE, earlier)])
                else:
                    store.write([document(earlier, round_ + 2, 4)])
            if round_ < 5:
                store.checkpoint()  # the last round stays pending: searched from the database
        assert len(current_segments(store)) == 5 and store.stats()["dead"] > 20
        live = store.chunk_vectors()
        ids = np.array([faiss_id(c) for c in live], dtype=np.int64)
        exact = faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
        exact.add_with_ids(np.stack(list(live.values())), ids)
        for query in rng.standard_normal((20, dimension)).astype(np.float32):
            scores, expected = exact.search(query.reshape(1, -1), 10)
            hits = store.search(query, k=10)
            assert [faiss_id(h.chunk_id) for h in hits] == expected[0].tolist()
            np.testing.assert_allclose([h.score for h in hits], scores[0], atol=1e-5)


def test_compaction_merges_by_policy_and_frees_old_segments_once_no_generation_names_them(tmp_path):
    config = settings(tmp_path, merge_factor=3, keep_generations=2)
    with open_store(config) as store:
        for start in range(0, 45, 3):  # 15 small checkpoints
            write_batches(store, start, start + 3)
            store.checkpoint()
            assert len(current_segments(store)) <= 2 * 3  # tiers keep the count logarithmic
        before = {entry.name for segment in current_segments(store) for entry in segment.files}
        store.compact()
        assert len(current_segments(store)) == 1 and store.stats()["dead"] == 0
        assert before <= set(segment_files(config))  # the previous generation still names the old files
        store.write(batch(45))
        store.checkpoint()
        assert not before & set(segment_files(config)) - {e.name for s in current_segments(store) for e in s.files}
        assert_holds(store, 46)
    with FaissStore.open(config, writable=False) as store:
        assert_holds(store, 46)


def test_a_segment_with_many_dead_vectors_is_rewritten_alone(tmp_path):
    config = settings(tmp_path, merge_factor=50, max_dead_ratio=0.5)
    with open_store(config) as store:
        store.write([upsert(f"x{n}", 1, 2) for n in range(10)])
        store.checkpoint()
        first = current_segments(store)[0]
        store.write([DocumentDelete(SOURCE, f"x{n}") for n in range(4)])
        store.checkpoint()  # 8 of 20 dead: kept
        assert current_segments(store)[0] == first
        store.write([DocumentDelete(SOURCE, "x4")])
        store.checkpoint()  # 10 of 20: rewritten
        rewritten = current_segments(store)[0]
        assert rewritten.seq != first.seq and rewritten.vectors == 10 and store.stats()["dead"] == 0


def test_stats_show_generations_sizes_and_replicas(tmp_path):
    config = settings(tmp_path, replicas=[{"name": "disk", "url": str(tmp_path / "replica")}])
    with open_store(config) as store:
        write_batches(store, 0, 5)
        store.checkpoint()
        stats = store.stats()
    assert stats["vectors"] == len(expected_after(5)[1]) and stats["documents"] == 5
    assert stats["generations"][0]["generation"] == 1 and stats["generations"][0]["bytes"] > 0
    assert stats["replicas"][0]["name"] == "disk" and stats["replicas"][0]["ok"] is True
    assert stats["replicas"][0]["bytes_sent"] == stats["generations"][0]["bytes"] + len(
        (config.path / "manifests" / "00000001.json").read_bytes())
    with FaissStore.open(config, writable=False) as store:  # a reader looks at what the replica holds
        replica = store.stats()["replicas"][0]
        assert (replica["ok"], replica["generation"]) == (True, 1)


def test_stats_read_counters_and_load_no_faiss(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 12)
        store.checkpoint()
    script = ("import sys, json\nfrom vectormill.stores.faiss_store import FaissStore\n"
              "from vectormill.stores.settings import StoreSettings\n"
              f"with FaissStore.open(StoreSettings(path={str(config.path)!r}), writable=False) as store:\n"
              "    stats = store.stats()\n"
              "print(json.dumps([stats['vectors'], stats['documents'], 'faiss' in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == f"[{len(expected_after(12)[1])}, {len(expected_after(12)[0])}, false]"


def test_replica_policy_is_validated():
    with pytest.raises(ValidationError, match="only 1 replica"):
        StoreSettings(min_replicas_confirmed=2, replicas=[{"name": "a", "url": "/tmp/a"}])
    with pytest.raises(ValidationError, match="unique"):
        StoreSettings(replicas=[{"name": "a", "url": "/tmp/a"}, {"name": "a", "url": "/tmp/b"}])
    assert StoreSettings().replicas_required == 0  # no replicas: replication is off
    secret = StoreSettings(replicas=[{"name": "a", "url": "s3://b/p", "storage_options": {"secret": "hunter2"}}])
    assert "hunter2" not in repr(secret)


def test_the_retry_queue_counts_failures_and_empties_as_documents_land(tmp_path):
    config = settings(tmp_path)
    first, later = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
    with open_store(config) as store:
        store.write([DocumentFailed(SOURCE, "d0", '{"id": "d0"}', "503 from the server", first),
                     DocumentFailed(SOURCE, "gone", '{"id": "gone"}', "timed out", first),
                     DocumentFailed("other", "x", "{}", "unreadable", first), CursorUpdate(SOURCE, "past them")])
        store.write([DocumentFailed(SOURCE, "d0", '{"id": "d0", "v": 2}', "reset by peer", later)])
        store.checkpoint()
        queued = store.retry_queue(SOURCE)
        assert [(q.document, q.attempts, q.reason, q.first_failed, q.last_failed, q.ref) for q in queued] == [
            ("d0", 2, "reset by peer", first, later, '{"id": "d0", "v": 2}'),
            ("gone", 1, "timed out", first, first, '{"id": "gone"}')]
        store.write([upsert("d0", 1, 2), DocumentDelete(SOURCE, "gone")])  # landed; deleted at the source
    for writable in (True, False):  # from the segments plus what came after, by the writer and by a reader
        with FaissStore.open(config, writable=writable) as store:
            assert store.retry_queue(SOURCE) == []
            assert [q.document for q in store.retry_queue()] == ["x"]
            assert store.cursor(SOURCE) == "past them"


def test_properties_and_the_ocr_flag_survive_reopening(tmp_path):
    config = settings(tmp_path)
    scanned = upsert("scan", 1, 1)
    scanned = DocumentUpsert(SOURCE, "scan", "v1", "scan", "scan.pdf", None,
                             (dataclasses.replace(scanned.chunks[0], ocr=True),), scanned.vectors)
    with open_store(config) as store:
        store.write([scanned, PropertyUpdate("precision", "bf16")])
        store.checkpoint()
        store.write([upsert("text", 1, 1), PropertyUpdate("note", "x"), PropertyUpdate("note", None)])
    with FaissStore.open(config, writable=False) as store:
        assert store.properties() == {"precision": "bf16"}
        assert store.search(scanned.vectors[0], k=1)[0].ocr is True
        assert store.search(vector_for(chunk_text("text", 0, 1)), k=1)[0].ocr is False


def test_a_hit_names_every_page_its_chunk_holds(tmp_path):
    config = settings(tmp_path)
    spanning = upsert("paged", 1, 3)
    pages = ((1, 1), (1, 3), (None, None))  # a chunk on page 1, one across pages 1-3, one of a page-less text
    chunks = tuple(dataclasses.replace(c, page=first, last_page=last) for c, (first, last) in zip(spanning.chunks, pages))
    with open_store(config) as store:
        store.write([dataclasses.replace(spanning, chunks=chunks)])
        found = {hit.chunk_id: (hit.page, hit.pages) for hit in store.search(spanning.vectors[1], k=3)}
    assert found == {chunks[0].chunk_id: (1, (1,)), chunks[1].chunk_id: (1, (1, 2, 3)),
                     chunks[2].chunk_id: (None, ())}

def test_opening_a_missing_store_without_a_model_says_so_and_creates_nothing(tmp_path):
    config = settings(tmp_path)
    for writable in (False, True):  # `store compact` opens it writable, with no model to create it with
        with pytest.raises(StoreError, match="no store at .*: run `vectormill backfill` first"):
            FaissStore.open(config, writable=writable)
    assert not config.path.exists()
