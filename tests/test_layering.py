"""The direction of imports is a contract (pyproject's [tool.importlinter]); CI fails when it breaks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs import-linter on an assembled copy of the packages under tmp/vectormill (the layout a regular install
# gives), hiding the editable install: its finder spreads `vectormill`'s subpackages over several folders, which
# import-linter, walking one package folder, cannot follow.
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


def assemble(target: Path) -> Path:
    """The packages as installed (pyproject's package-dir) under target/vectormill, with pyproject.toml; returns
    the folder to lint from."""
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(folders.items()):  # the root package first, then its subpackages
        shutil.copytree(ROOT / folder, target / package.replace(".", "/"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", target)
    return target


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT_COPY, str(folder)], cwd=folder, capture_output=True,
                          text=True, timeout=300)


def test_the_tree_keeps_every_contract(tmp_path):
    result = lint(assemble(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("stores/lock.py", "from vectormill.connectors import filesystem", "Stores import nothing else of ours"),
    ("embedding/pool.py", "from vectormill.connectors.base import Document", "Embedding reaches connectors only"),
    ("cli/search.py", "from vectormill.embedding import registry", "The CLI calls flows and stores"),
    ("connectors/http.py", "from vectormill.stores import records", "The CLI sits on the flows"),
    ("flows/server.py", "from vectormill.flows import ingest", "No import cycles"),
    ("flows/search.py", "from vectormill import reader", "The CLI sits on the flows"),
    ("cli/search.py", "from vectormill.integrations import langchain", "nothing of ours reaches the framework"),
    ("service.py", "from vectormill.embedding import registry", "The public API reads through the flows"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    assemble(tmp_path)
    with open(tmp_path / "vectormill" / module, "a") as handle:
        handle.write(f"\n{line}  # deliberately against the layering\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken


if __name__ == "__main__":  # .ci/run: lint the packages as a regular install lays them out
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        result = lint(assemble(Path(folder)))
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
