"""SIGKILL at many points: no acknowledged write is lost or duplicated, and no crash leaves a half state.

The writer (a real subprocess) writes deterministic batches, each ending with cursor "i", and logs
"begin i" before `write` and "ack i" after it returns. Most runs kill themselves at a chosen event
of a chosen phase: the n-th SQL statement of a write, the n-th file operation (open for writing,
rename, remove) or SQL statement of a checkpoint or a compaction, the n-th file operation on the
replica; a few are killed from outside at a random moment. After each kill the store must hold
exactly batches 0 … s, where s is at least the last acknowledged batch and the cursor stored after
the previous kill, and at most the last batch begun: nothing lost, nothing twice, nothing half.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.replicas import Location
from vectormill.stores.settings import StoreSettings

from .cli_process import Preloaded
from .servers.legacy_store import write_legacy_store
from .servers.store_batches import DIMENSION, SOURCE, batch
from .test_store import assert_holds

REPO = Path(__file__).resolve().parents[1]
ENDLESS = 10**7  # killed writers never run out of batches
FINAL_EXTRA = 60
# (phase, n): kill at the n-th event of that phase; ("random", 0): killed from outside after a random delay.
KILLS = ([("write", n) for n in (1, 4, 9, 17, 26, 40)] + [("checkpoint", n) for n in (1, 3, 7, 12, 20, 31)]
         + [("compaction", n) for n in (1, 4, 9, 15, 24)] + [("replication", n) for n in (1, 2, 4, 6, 9)]
         + [("random", 0)] * 4)

# Audit events that change files; "open" counts when it opens for writing.
FILE_EVENTS = """
import os

def changes_a_file(event, args):
    if event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
        return args[0]
    if event == "open" and len(args) > 2 and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
            or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))):
        return args[0]
    return None


def under(path, root):
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(root)
"""

WRITER = FILE_EVENTS + """
import signal, sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch
from tests.test_store_crash import crash_settings
from vectormill.stores.faiss_store import FaissStore

phase, target = sys.argv[1], int(sys.argv[2])
state = {{"current": "open", "count": 0}}


def event(where):
    effective = "replication" if where == "replica" else state["current"]
    if effective == phase:
        state["count"] += 1
        if state["count"] == target:
            os.kill(os.getpid(), signal.SIGKILL)


def on_audit(name, args):
    path = changes_a_file(name, args)
    if under(path, {replica!r}):
        event("replica")
    elif under(path, {store!r}):
        event("store")


store = FaissStore.open(crash_settings({root!r}), model="test-model", dimension=8)
store.db.set_trace_callback(lambda statement: statement.startswith("--") or event("sql"))  # "--": nested ones
start = int(store.cursor("s") or -1) + 1
print("ready", flush=True)
sys.addaudithook(on_audit)
with open({acks!r}, "a") as acks:
    for i in range(start, {total}):
        acks.write(f"begin {{i}}\\n")
        acks.flush()  # in the page cache: survives SIGKILL
        state["current"] = "write"
        store.write(batch(i))
        state["current"] = "other"
        acks.write(f"ack {{i}}\\n")
        acks.flush()
        if i % 4 == 3:
            state["current"] = "checkpoint"
            store.checkpoint()
        if i % 11 == 10:
            state["current"] = "compaction"
            store.compact()
        state["current"] = "other"
store.checkpoint()
store.close()
print("done", flush=True)
"""


def crash_settings(root: str) -> StoreSettings:
    """Small merges and one kept generation, copied to a local replica: plenty of files to write, prune and copy."""
    return StoreSettings(path=Path(root) / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                         keep_generations=1, merge_factor=3, replicas=[{"name": "disk", "url": str(Path(root) / "replica")}])


def logged(acks: Path, kind: str) -> int:
    lines = [line.split() for line in acks.read_text().splitlines()] if acks.exists() else []
    return max((int(number) for word, number in lines if word == kind), default=-1)


def check_store(root: Path, acks: Path, previous: int) -> int:
    """Assert the recovered state against what was acknowledged; return the stored cursor."""
    config = crash_settings(str(root))
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        assert not any("CORRUPT" in note for note in store.notes), store.notes
        stored = int(store.cursor(SOURCE) or -1)
        acknowledged, begun = logged(acks, "ack"), logged(acks, "begin")
        # A writer killed after its write committed but before the ack leaves the store ahead of the acks
        # (the next writer starts after what is stored, and may be killed before its own first ack).
        assert max(acknowledged, previous) <= stored <= max(begun, previous), (acknowledged, previous, stored, begun)
        assert_holds(store, stored + 1)
    for location in (Location.primary(root / "store"), Location.replica(config.replicas[0])):
        checked: dict = {}
        for generation in location.generations():
            manifest, problems = location.verify(generation, checked)
            if manifest is not None:  # a copy whose manifest is missing or torn is an unfinished one, never used
                assert problems == [], problems
    return stored


@pytest.mark.slow
def test_sigkill_in_write_checkpoint_compaction_and_replication_loses_no_acknowledged_write(tmp_path):
    rng = random.Random(20240605)
    acks = tmp_path / "acks"
    script = tmp_path / "writer.py"
    source = dict(repo=str(REPO), root=str(tmp_path), store=str(tmp_path / "store"), replica=str(tmp_path / "replica"),
                  acks=str(acks))
    script.write_text(WRITER.format(total=ENDLESS, **source))
    stored, killed = -1, {phase: 0 for phase, _ in KILLS}
    with Preloaded(dict(os.environ), tmp_path / "writer-runs", STORE_IMPORTS, script) as runs:
        for phase, target in rng.sample(KILLS, len(KILLS)):
            writer = runs.start(phase, str(target), cwd=tmp_path)
            if writer.readline().strip() != "ready":
                raise AssertionError(writer.communicate(timeout=60)[1][-3000:])
            if phase == "random":
                time.sleep(rng.uniform(0.0, 0.6))
                writer.send_signal(signal.SIGKILL)
            _, errors = writer.communicate(timeout=300)
            assert writer.returncode == -signal.SIGKILL, (phase, target, writer.returncode, errors[-3000:])
            killed[phase] += 1
            stored = check_store(tmp_path, acks, stored)
    print(f"{sum(killed.values())} kills: {killed}")
    assert sum(killed.values()) >= 20
    assert all(killed[phase] >= 1 for phase in ("write", "checkpoint", "compaction", "replication")), killed

    # A run that is not killed completes the corpus.
    total = stored + 1 + FINAL_EXTRA
    script.write_text(WRITER.format(total=total, **source))
    done = subprocess.run([sys.executable, str(script), "none", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[-1] == "done", done.stderr[-3000:]
    check_store(tmp_path, acks, stored)
    with FaissStore.open(crash_settings(str(tmp_path)), writable=False) as store:
        assert_holds(store, total)


KILLED_AT_A_FILE_EVENT = FILE_EVENTS + """
import signal, sys
sys.path.insert(0, {repo!r})
target, seen = int(sys.argv[1]), [0]


def on_audit(name, args):
    if under(changes_a_file(name, args), {store!r}):
        seen[0] += 1
        if seen[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)


sys.addaudithook(on_audit)
{body}
print("done", flush=True)
"""


# What the sweeps' scripts import: `Preloaded` forks each run from a process that imported them once.
STORE_IMPORTS = ("vectormill.cli.main", "vectormill.stores.drill", "vectormill.stores.faiss_store",
                 "vectormill.stores.restore", "tests.servers.store_batches", "tests.test_store_crash")


def kill_at_every_file_event(tmp_path, store: Path, body: str, reset, check) -> dict[str, int]:
    """Run `body` killed at its 1st, 2nd, … file event under `store` until it completes; `check` after each run."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT_A_FILE_EVENT.format(repo=str(REPO), store=str(store), body=body))
    outcomes: dict[str, int] = {}
    with Preloaded(dict(os.environ), tmp_path / "killed-runs", STORE_IMPORTS, script) as runs:
        for target in range(1, 500):
            reset()
            run = runs.start(str(target), cwd=tmp_path)
            output, errors = run.communicate(timeout=300)
            if run.returncode == 0:
                assert output.split()[-1] == "done"
                outcome = check()
                outcomes[f"completed: {outcome}"] = target
                return outcomes
            assert run.returncode == -signal.SIGKILL, errors[-3000:]
            outcome = check()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    raise AssertionError("never completed")


def replicated_settings(root: Path) -> StoreSettings:
    """A store under root/store with one directory replica, root/replica, checkpointed by hand."""
    return StoreSettings(path=root / "store", checkpoint_every_seconds=None, keep_generations=3,
                         replicas=[{"name": "disk", "url": str(root / "replica")}])


def write_checkpointed(store: FaissStore, written: int) -> None:
    """Batches 0-29 checkpointed every ten, the rest up to `written` only acknowledged (in the log)."""
    for i in range(written):
        store.write(batch(i))
        if i % 10 == 9 and i < 30:
            store.checkpoint()


@pytest.mark.slow
def test_a_restore_killed_at_any_step_leaves_the_old_store_or_exactly_the_restored_generation(tmp_path):
    """Seal first, then set aside: the old restore moved newer generations and the log away before the restored
    generation existed, and a crash in between left an older state without a word."""
    root = tmp_path / "built"
    config = replicated_settings(root)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        write_checkpointed(store, 35)
    work = tmp_path / "work"

    def reset():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(root, work)

    settings = f"StoreSettings(path={str(work / 'store')!r}, replicas=[{{'name': 'disk', 'url': {str(work / 'replica')!r}}}])"
    body = ("from vectormill.stores.restore import restore_store\nfrom vectormill.stores.settings import StoreSettings\n"
            f"restore_store({settings}, source='disk', generation=1)")

    def check():
        with FaissStore.open(StoreSettings(path=work / "store"), model="test-model", dimension=DIMENSION) as store:
            assert not any("CORRUPT" in note for note in store.notes), store.notes
            state = "before" if store.lsn == 35 else "restored"
            assert_holds(store, 35 if state == "before" else 10)
            return state

    outcomes = kill_at_every_file_event(tmp_path, work / "store", body, reset, check)
    print(f"restore killed at each file event: {outcomes}")
    assert outcomes.get("before", 0) >= 3 and outcomes.get("restored", 0) >= 2, outcomes
    assert "completed: restored" in outcomes


@pytest.mark.slow
def test_a_migration_killed_at_any_step_leaves_the_old_store_or_the_migrated_one(tmp_path):
    store_path = tmp_path / "store"

    def reset():
        shutil.rmtree(store_path, ignore_errors=True)
        write_legacy_store(store_path, [batch(i) for i in range(30)], 20, DIMENSION)

    body = ("from vectormill.stores.faiss_store import FaissStore\nfrom vectormill.stores.settings import StoreSettings\n"
            f"FaissStore.open(StoreSettings(path={str(store_path)!r}), model='test-model', dimension=8).close()")

    def check():
        with FaissStore.open(StoreSettings(path=store_path), model="test-model", dimension=DIMENSION) as store:
            assert_holds(store, 30)
            assert len(store.notes) <= 1 and not any("CORRUPT" in note for note in store.notes), store.notes
            return "migrated now" if store.notes and store.notes[0].startswith("migrated") else "migrated before"

    outcomes = kill_at_every_file_event(tmp_path, store_path, body, reset, check)
    print(f"migration killed at each file event: {outcomes}")
    assert outcomes.get("migrated now", 0) >= 1 and outcomes.get("migrated before", 0) >= 1, outcomes
