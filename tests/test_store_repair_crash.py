"""`store verify --repair` killed with SIGKILL at each of its file changes (primary and replica): afterwards every
acknowledged write is there, and a repair run again leaves every copy verified."""

import shutil

import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.restore import verify_and_repair, verify_store

from .servers.store_batches import DIMENSION
from .test_store import assert_holds, current_files, damage
from .test_store_crash import kill_at_every_file_event, replicated_settings, write_checkpointed

WRITTEN = 35


@pytest.mark.slow
def test_verify_repair_killed_at_any_step_loses_nothing_and_a_second_repair_verifies(tmp_path):
    root = tmp_path / "built"
    config = replicated_settings(root)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        write_checkpointed(store, WRITTEN)
        rows, indexes = current_files(store, ".rows"), current_files(store, ".faiss")
    damage(root / "store" / "segments" / indexes[0], "bitflip")  # damaged on the primary: fetched from the replica
    damage(root / "replica" / "segments" / rows[-1], "bitflip")  # damaged on the replica: copied from the primary
    (root / "replica" / "segments" / indexes[-1]).unlink()  # lost on the replica
    work = tmp_path / "work"
    settings = replicated_settings(work)

    def reset():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(root, work)

    body = ("from vectormill.stores.restore import verify_and_repair\nfrom vectormill.stores.settings import StoreSettings\n"
            f"assert verify_and_repair(StoreSettings(path={str(work / 'store')!r}, checkpoint_every_seconds=None, "
            f"keep_generations=3, replicas=[{{'name': 'disk', 'url': {str(work / 'replica')!r}}}]))['ok']")

    def check():
        left = len(verify_store(settings)["problems"])
        with FaissStore.open(settings, model="test-model", dimension=DIMENSION) as store:
            assert_holds(store, WRITTEN)
        again = verify_and_repair(settings)
        assert again["ok"], again["problems"]
        assert verify_store(settings)["ok"]
        with FaissStore.open(settings, writable=False) as store:
            assert_holds(store, WRITTEN)
        return "all repaired" if not left else "problems left"

    outcomes = kill_at_every_file_event(tmp_path, work, body, reset, check)
    print(f"verify --repair killed at each file event: {outcomes}")
    assert outcomes.get("problems left", 0) >= 3, outcomes
    assert "completed: all repaired" in outcomes
