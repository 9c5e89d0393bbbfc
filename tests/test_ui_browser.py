"""The Prefect UI, in a real headless browser, explains a finished run: its summary artifact is there.

Uses Debian's chromium (`apt-get install chromium`) with --dump-dom, which runs the UI's
JavaScript against the live server before printing the page; skipped when chromium is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest_plugins = ["tests.servers.prefect_server"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
]


def rendered(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran (the UI fetches the run and its artifacts from the API)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--window-size=1400,2400", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_run_page_shows_the_summary_artifact(served, tmp_path):
    started = json.loads(served.cli("trigger", "mixed", "--json", "--config", str(served.config)).stdout.splitlines()[-1])
    run = served.wait_for_run(started["flow_run_id"])
    assert run["state_type"] == "COMPLETED"

    # The run's page: name, state and the warning it logged. (Its Artifacts tab appears only once the
    # run has loaded, so --dump-dom cannot open it; the artifact's own page, linked from it, can.)
    page = rendered(started["url"], tmp_path)
    assert run["name"] in page and "Completed" in page
    assert "mixed: truncated.pdf: not a readable PDF" in page
    summary = served.artifacts(run["id"])["ingest-summary-mixed"]
    artifact_page = rendered(f"{served.server.ui_url}/artifacts/artifact/{summary['id']}", tmp_path)
    assert run["name"] in artifact_page  # the artifact names the run it belongs to
    assert "vectormill ingest: mixed" in artifact_page
    assert "Status: completed with warnings" in artifact_page
    assert "truncated.pdf" in artifact_page
