"""Readers see one consistent generation, always, while a writer writes, checkpoints, compacts and prunes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

from .servers.store_batches import DIMENSION, vector_for
from .test_store import assert_holds

REPO = Path(__file__).resolve().parents[1]

# The writer prunes exactly when the reader first opens a file of the store's generations: an audit hook
# (in a subprocess, so that it does not stay in pytest's) runs the writer at that moment.
PRUNED_UNDER_A_READER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch, vector_for
from tests.test_store import assert_holds
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

config = StoreSettings(path={path!r}, checkpoint_every_seconds=None, keep_generations=1)
writer = FaissStore.open(config, model="test-model", dimension=8)
for i in range(20):
    writer.write(batch(i))
writer.checkpoint()
state = {{"armed": False, "fired": 0}}

def writer_moves_on(event, args):
    if not state["armed"] or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    path = os.fspath(args[0])
    if not path.startswith({path!r}) or not any(part in path for part in ("segments", "generations")):
        return
    state["armed"] = False
    state["fired"] += 1
    for i in range(20, 24):
        writer.write(batch(i))
        writer.checkpoint()  # keep_generations = 1: what the reader was about to open goes
    if hasattr(writer, "compact"):
        writer.compact()  # every segment rewritten: none the reader's generation named is left

sys.addaudithook(writer_moves_on)
state["armed"] = True
reader = FaissStore.open(config, writable=False)
hit = reader.search(vector_for("d3 chunk 0 v1"), k=1)[0]
assert_holds(reader, reader.lsn)
print(json.dumps({{"fired": state["fired"], "document": hit.document, "lsn": reader.lsn, "notes": reader.notes}}))
"""


def test_a_reader_whose_generation_is_pruned_while_it_opens_moves_to_the_newer_one(tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(PRUNED_UNDER_A_READER.format(repo=str(REPO), path=str(tmp_path / "store")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["fired"] == 1  # the writer did prune under the reader
    assert seen["document"] == "d3" and seen["lsn"] == 24 and seen["notes"] == []


WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

config = StoreSettings(path={path!r}, checkpoint_every_seconds=None, keep_generations=1, merge_factor=2)
with FaissStore.open(config, model="test-model", dimension=8) as store:
    for i in range({batches}):
        store.write(batch(i))
        if i % 4 == 3:
            store.checkpoint()
        if i % 15 == 14:
            store.compact()
print("done", flush=True)
"""


@pytest.mark.slow
def test_readers_in_a_loop_never_fail_while_the_writer_checkpoints_compacts_and_prunes(tmp_path):
    config = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), path=str(config.path), batches=150))
    with FaissStore.open(config, model="test-model", dimension=DIMENSION):
        pass  # the store exists before the first reader looks
    writer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = 0
    long_lived = FaissStore.open(config, writable=False)  # keeps its snapshot while everything it names is pruned
    held = long_lived.lsn
    try:
        while writer.poll() is None or reads < 3:
            with FaissStore.open(config, writable=False) as reader:
                lsn = reader.lsn
                assert_holds(reader, lsn)  # one consistent state: rows, segment ids, cursor
                if lsn:
                    hit = reader.search(vector_for(f"d{lsn - 1} chunk 0 v1"), k=1)[0]
                    assert hit.document == f"d{lsn - 1}"
                assert not any("CORRUPT" in note for note in reader.notes), reader.notes
            assert_holds(long_lived, held)
            reads += 1
    finally:
        long_lived.close()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and out.split() == ["done"], err[-3000:]
    print(f"{reads} reads while the writer ran")
    with FaissStore.open(config, writable=False) as reader:
        assert_holds(reader, 150)
