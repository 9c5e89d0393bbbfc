"""The direction of imports is a contract (pyproject's [tool.importlinter]); CI fails when it breaks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "flows", "connectors", "embedding", "stores")

# Runs import-linter on a copy of the packages under tmp/vectormill, hiding the editable install.
LINT_COPY = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path_importer_cache.clear()
sys.path.insert(0, sys.argv[1])
import vectormill.stores
assert vectormill.stores.__file__.startswith(sys.argv[1]), vectormill.stores.__file__
from importlinter.cli import lint_imports
sys.exit(lint_imports())
"""


def lint(folder: Path, copy: bool) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", LINT_COPY, str(folder)] if copy else [str(Path(sys.executable).parent / "lint-imports")]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    result = lint(ROOT, copy=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("stores/lock.py", "from vectormill.connectors import filesystem", "Stores import nothing else of ours"),
    ("embedding/pool.py", "from vectormill.connectors.base import Document", "Embedding reaches connectors only"),
    ("cli/search.py", "from vectormill.embedding import registry", "The CLI calls flows and stores"),
    ("connectors/http.py", "from vectormill.stores import records", "The CLI sits on the flows"),
    ("flows/server.py", "from vectormill.flows import ingest", "No import cycles"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    copy = tmp_path / "vectormill"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(copy / module, "a") as handle:
        handle.write(f"\n{line}  # deliberately against the layering\n")
    result = lint(tmp_path, copy=True)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken
