"""Fixtures shared by the tests: one Prefect test harness for the session."""

from __future__ import annotations

import os

import pytest

# The test servers are plugins of some test modules (pytest_plugins) and are imported by them too; registering
# them here, before any test module imports them, lets pytest rewrite their asserts instead of warning.
pytest.register_assert_rewrite("tests.servers")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server for the whole session (it takes 5-25 s to start here)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_collection_modifyitems(items):
    """Files with the most slow tests first: xdist's loadfile hands out whole files in this order, and a long file
    handed out last keeps one worker busy while the other idles."""
    slow_in_file: dict = {}
    for item in items:
        slow_in_file[item.path] = slow_in_file.get(item.path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_in_file[item.path])
