"""A run's exit status is its outcome (0 completed, warnings included; 1 failed), never a signal.

A share always holds some broken PDFs: they stay on the retry queue and each run fetches them again.
Such runs used to start the model load in the background and then die at interpreter exit with
SIGABRT (exit 134) while torch was still loading; every re-run here is a real process.
"""

from __future__ import annotations

import json
import os

import pytest

from vectormill.flows.retry_queue import INTERRUPTED
from vectormill.flows.sample import write_pdf

from .cli_process import harness_env, run
from .corpus import write_config

BROKEN = {"scan-1.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog", "scan-2.pdf": b"%PDF-1.7\n\x00\xff garbage",
          "scan-3.pdf": b"not a PDF at all, though it says so"}


def summary_of(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_share_with_broken_pdfs_rerun_ten_times_exits_0_each_time_with_their_real_reasons(
        tmp_path, prefect_harness):
    root = tmp_path / "pdfs"
    root.mkdir()
    for n in range(24):
        write_pdf([f"Runbook {n}: the backup of rack {n} is checked every Monday."], root / f"runbook-{n}.pdf")
    for name, data in BROKEN.items():
        (root / name).write_bytes(data)
    write_config(tmp_path, fetch_batch_size=8)
    env = harness_env()

    first = run("backfill", "--json", cwd=tmp_path, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert summary_of(first)["documents"]["new"] == 24

    for attempt in range(11):
        if attempt == 10:
            # Same text, new modification time: the model starts loading, and nothing needs it (chunks reused).
            os.utime(root / "runbook-3.pdf")
        rerun = run("backfill", "--json", cwd=tmp_path, env=env, timeout=600)
        assert rerun.returncode == 0, (attempt, rerun.returncode, rerun.stderr[-3000:])
        summary = summary_of(rerun)
        reasons = {f["document"]: f["reason"] for f in summary["failures"]}
        reasons.update({s["document"]: s["reason"] for s in summary["stuck"]})  # after max_document_attempts
        assert set(reasons) == set(BROKEN), attempt
        assert all(reason != INTERRUPTED and "interrupted" not in reason for reason in reasons.values()), reasons
        assert summary["chunks_embedded"] == 0
    assert summary["documents"]["changed"] == 1 and summary["chunks_reused"] >= 1


@pytest.mark.slow
def test_a_dask_run_of_a_share_with_a_broken_pdf_exits_0_first_and_on_its_rerun(tmp_path, prefect_harness):
    """The flow process of a Dask run starts and stops a local cluster; what the cluster ran in the background is
    stopped before the process exits, and the exit status is the outcome (a broken PDF is a warning, not a failure
    of the run)."""
    root = tmp_path / "pdfs"
    root.mkdir()
    for n in range(2):
        write_pdf([f"Runbook {n}: the generator of site {n} is tested every Friday."], root / f"runbook-{n}.pdf")
    (root / "scan-1.pdf").write_bytes(BROKEN["scan-1.pdf"])
    write_config(tmp_path, extra='\n[execution]\ntask_runner = "dask"\ndask_workers = 1\ndask_threads_per_worker = 1\n')

    for attempt in range(2):  # the first run embeds; the re-run fetches only the broken file again
        result = run("backfill", "--json", cwd=tmp_path, env=harness_env(), timeout=600)
        assert result.returncode == 0, (attempt, result.returncode, result.stderr[-3000:])
        summary = summary_of(result)
        assert summary["execution"]["task_runner"] == "dask"
        assert [f["document"] for f in summary["failures"]] == ["scan-1.pdf"], attempt
        assert "interrupted" not in summary["failures"][0]["reason"]
    assert summary["documents"]["new"] == 0 and summary["chunks_embedded"] == 0
