"""`store verify` while a real writer (a subprocess) checkpoints, merges and prunes generations in a loop: it works on
the generations that exist while it reads them, so it never reports a generation the writer removed meanwhile as
damaged, and still reports real damage."""

import subprocess
import sys
from pathlib import Path

from vectormill.stores.restore import verify_store
from vectormill.stores.settings import ReplicaSettings

from .test_store import damage, open_store, settings, write_batches

REPO = Path(__file__).resolve().parents[1]
VERIFIES = 12

WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.test_store_verify_concurrent import writer_settings
from tests.test_store import open_store, write_batches

stop = Path(sys.argv[2])
with open_store(writer_settings(Path(sys.argv[1]))) as store:
    print("ready", flush=True)
    i = 40
    while not stop.exists():  # a checkpoint per batch: every few commits a merge, and files pruned after each
        write_batches(store, i, i + 1)
        store.checkpoint()
        i += 1
"""


def _newest(report):
    return max(g["generation"] for g in report["generations"] if g["where"] == "primary")


def writer_settings(tmp_path):
    return settings(tmp_path, merge_factor=2, keep_generations=2,
                    replicas=(ReplicaSettings(name="copy", url=str(tmp_path / "copy")),))


def test_verify_while_a_writer_checkpoints_raises_no_false_alarm_and_still_finds_damage(tmp_path):
    config = writer_settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 40)
        store.checkpoint()
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO)), str(tmp_path), str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports = []
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        # Until the writer has committed generations past those the first verify saw, and a few times more.
        while writer.poll() is None and (len(reports) < VERIFIES or _newest(reports[-1]) < _newest(reports[0]) + 10):
            reports.append(verify_store(config))
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert _newest(reports[-1]) >= _newest(reports[0]) + 10  # verified while generations came and went
    alarms = [problem for report in reports for problem in report["problems"]]
    assert alarms == []
    assert all(report["generations"] for report in reports)

    with open_store(config) as store:
        current = store.generations_info()[0]["generation"]
        named = sorted(p.name for p in (config.path / "segments").iterdir())
    damaged = config.path / "segments" / named[0]
    damage(damaged, "bitflip")
    report = verify_store(config)
    assert not report["ok"] and [(p["where"], p["file"]) for p in report["problems"]] == [
        ("primary", f"segments/{named[0]}")]
    assert current in [g["generation"] for g in report["generations"]]
