"""A writer SIGKILLed at random points in write, checkpoint and replication loses no acknowledged write.

The writer (a real subprocess) writes deterministic batches, each ending with cursor "i", and
appends i to an acknowledgement file after `write` returns. After each kill the store must hold
exactly batches 0 … c for c = the last acknowledged batch, or the one after it (written, killed
before the acknowledgement): nothing lost, nothing twice, nothing half.
"""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.replicas import Location
from vectormill.stores.settings import StoreSettings

from .servers.store_batches import DIMENSION, SOURCE
from .test_store import assert_holds

REPO = Path(__file__).resolve().parents[1]
# The killed writers never run out of batches, so every kill lands while writing; the last run
# then finishes FINAL_EXTRA batches past what the kills left.
ENDLESS = 10**7
FINAL_EXTRA = 100
KILLS = 24

WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch
from tests.test_store_crash import crash_settings
from vectormill.stores.faiss_store import FaissStore

store = FaissStore.open(crash_settings({root!r}), model="test-model", dimension=8)
start = int(store.cursor("s") or -1) + 1
print("ready", flush=True)
with open({acks!r}, "a") as acks:
    for i in range(start, {total}):
        store.write(batch(i))
        acks.write(f"{{i}}\\n")
        acks.flush()  # in the page cache: survives SIGKILL
        if i % 11 == 10:
            store.checkpoint()
store.checkpoint()
store.close()
print("done", flush=True)
"""


def crash_settings(root: str) -> StoreSettings:
    """Checkpoints every ~40 vectors, copied to a local replica: plenty of checkpoints and copies to hit."""
    return StoreSettings(path=Path(root) / "store", checkpoint_every_vectors=40, checkpoint_every_seconds=None,
                         keep_generations=2, replicas=[{"name": "disk", "url": str(Path(root) / "replica")}])


def last_acknowledged(acks: Path) -> int:
    lines = acks.read_text().split() if acks.exists() else []
    return int(lines[-1]) if lines else -1


def check_store(root: Path, acks: Path) -> dict[str, bool]:
    """Assert the recovered state; return what the kill interrupted (from the traces on disk)."""
    traces = {
        "checkpoint": any((root / "store" / "generations").glob(".tmp-*")),
        "replication": any(not (folder / "manifest.json").exists()
                           for folder in (root / "replica").glob("[0-9]*")),
    }
    config = crash_settings(str(root))
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        traces["torn write"] = any("torn write" in note for note in store.notes)
        assert not any("CORRUPT" in note for note in store.notes), store.notes
        acknowledged = last_acknowledged(acks)
        stored = int(store.cursor(SOURCE) or -1)
        assert acknowledged <= stored <= acknowledged + 1, (acknowledged, stored)
        assert_holds(store, stored + 1)
    for location in (Location.primary(root / "store" / "generations"), Location.replica(config.replicas[0])):
        for generation in location.generations():
            manifest, problems = location.verify(generation)
            if manifest is not None:  # a copy without its manifest is an unfinished one, never used
                assert problems == [], problems
    return traces


@pytest.mark.slow
def test_sigkill_at_random_points_loses_no_acknowledged_write(tmp_path):
    rng = random.Random(20240605)
    acks = tmp_path / "acks"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), root=str(tmp_path), acks=str(acks), total=ENDLESS))
    seen: dict[str, int] = {"checkpoint": 0, "replication": 0, "torn write": 0}
    kills = 0
    while kills < KILLS:
        writer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.35))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        assert writer.returncode == -signal.SIGKILL
        kills += 1
        for trace, hit in check_store(tmp_path, acks).items():
            seen[trace] += hit
    print(f"{kills} kills; interrupted: {seen}")

    # A re-run completes the corpus.
    total = last_acknowledged(acks) + FINAL_EXTRA
    script.write_text(WRITER.format(repo=str(REPO), root=str(tmp_path), acks=str(acks), total=total))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "done", done.stderr
    check_store(tmp_path, acks)
    with FaissStore.open(crash_settings(str(tmp_path)), writable=False) as store:
        assert_holds(store, total)
