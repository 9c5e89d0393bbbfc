"""The `vectormill` command as users and their scripts run it: a real process, its exit code, stdout and stderr."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from .cli_process import VECTORMILL, harness_env, run, run_many
from .corpus import TOPICS, write_broken_pdfs, write_config, write_corpus



def test_bad_config_prints_one_clear_line_and_exits_non_zero(tmp_path):
    (tmp_path / "vectormill.toml").write_text('[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\n'
                                              'max_delete_ratio = 2\n')
    result = run("backfill", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: sources[docs].max_delete_ratio: Input should be less than or equal to 1"]
    assert "Traceback" not in result.stderr

    result = run("backfill", "--config", str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert result.returncode == 2 and "not found: create one with `vectormill init`" in result.stderr

    (tmp_path / "vectormill.toml").write_text('[[sources]]\nname = "x"\ntype = "gopher"\n')
    result = run("backfill", cwd=tmp_path)
    assert result.returncode == 2 and "unknown source type 'gopher'" in result.stderr


def test_init_writes_an_example_that_loads(tmp_path):
    assert run("init", cwd=tmp_path).returncode == 0
    (tmp_path / "pdfs").mkdir()
    from vectormill.flows.config import load_config

    config = load_config(tmp_path / "vectormill.toml", environ={})
    assert config.sources[0].name == "docs"
    again = run("init", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr


def test_commands_that_run_no_flow_import_no_prefect(tmp_path):
    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"]})
    write_config(tmp_path)
    for command in (["store", "stats"], ["failures"], ["sources", "audit"]):
        code = (f"import sys; from vectormill.cli import main as cli; sys.argv = ['vectormill', *{command!r}];\n"
                "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
                "print('PREFECT LOADED' if 'prefect' in sys.modules else 'NO PREFECT')")
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
        assert result.stdout.strip().splitlines()[-1] == "NO PREFECT", (command, result.stderr)
        assert "no store at" in result.stderr  # nothing ingested yet: a clear line, not a traceback


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_backfill_search_and_stats_json_contracts(tmp_path):
    env = harness_env()
    known = write_corpus(tmp_path / "pdfs", {k: TOPICS[k] for k in ("chess", "baking", "volcanoes")})
    broken = write_broken_pdfs(tmp_path / "pdfs")
    write_config(tmp_path)

    # One process for the four command lines (a process start and its imports cost seconds): their outputs
    # and exit codes are the contracts; test_bad_config_... and test_failures_... run the console script itself.
    result, searched, stated, for_people = run_many(
        [["backfill", "--json"], ["search", TOPICS["baking"], "-k", "2", "--json"], ["store", "stats", "--json"],
         # Within the failure ratio the run completes.
         ["VECTORMILL_SOURCES__DOCS__MAX_FAILED_RATIO=0.6", "backfill"]], cwd=tmp_path, env=env)

    # 4 of 7 documents broken: above max_failed_ratio = 0.5, so the run fails — with its summary all the same.
    assert result["code"] == 1, result["stderr"][-3000:]
    assert result["stderr"].strip().splitlines()[-1] == (
        "error: source 'docs': 4 of 7 documents failed (57%), above max_failed_ratio = 0.5; "
        "see the failures listed in the summary")
    assert "Traceback" not in result["stderr"]
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    assert summary["documents"] == {"seen": 7, "new": 3, "changed": 0, "unchanged": 0, "deleted": 0, "failed": 4}
    assert summary["chunks_embedded"] > 0 and set(summary["seconds"]) >= {"total"}
    assert {f["document"] for f in summary["failures"]} == set(broken)
    assert all(set(f) >= {"source", "document", "reason"} for f in summary["failures"])
    assert summary["retry_queue"] == {"docs": 4} and summary["stuck"] == []

    assert searched["code"] == 0, searched["stderr"]
    hits = json.loads(searched["stdout"])
    assert len(hits) == 2 and hits[0]["score"] >= hits[1]["score"]
    assert set(hits[0]) >= {"document", "source", "page", "score", "text"}
    assert (hits[0]["document"], hits[0]["source"], hits[0]["page"]) == ("baking.pdf", "docs", 2)

    assert stated["code"] == 0, stated["stderr"]
    stats = json.loads(stated["stdout"])
    assert stats["documents"] == len(known) and stats["vectors"] == summary["chunks_embedded"]
    assert stats["generation"] >= 1
    assert stats["recall_target"] == 0.95 and stats["segment_indexes"] and all(
        (segment["index"], segment["recall"], segment["effort"]) == ("exact", 1.0, None)  # small: exact
        and segment["vectors"] >= 1 for segment in stats["segment_indexes"])

    # For people: a summary table and the failed documents with their reasons, no JSON.
    assert for_people["code"] == 0, for_people["stderr"][-3000:]
    assert "ingest summary" in for_people["stdout"] and "failed documents" in for_people["stdout"]
    assert "not-a-pdf.pdf" in for_people["stdout"]


def test_commands_that_need_no_source_or_store_work_without_a_config_file(tmp_path, monkeypatch):
    from typer.main import get_command
    from typer.testing import CliRunner

    from vectormill.cli.main import app

    env = {key: value for key, value in os.environ.items() if key != "VECTORMILL_CONFIG"}
    result = run("capacity", "--json", cwd=tmp_path, env=env)  # no vectormill.toml here
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["workers"] >= 1 and plan["batch_tokens"] > 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VECTORMILL_CONFIG", raising=False)
    runner = CliRunner(env={"COLUMNS": "200"})

    def commands(group: click.Group, path: list[str]):
        for name, command in group.commands.items():
            yield [*path, name], command
            if isinstance(command, click.Group):
                yield from commands(command, [*path, name])

    root = get_command(app)
    for path, command in [([], root), *commands(root, [])]:
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        # What help texts say in brackets ("[drift] thresholds") is shown, not taken for markup.
        texts = [inspect.getdoc(command.callback) or "" if command.callback else command.help or ""]
        texts += [param.help or "" for param in command.params if isinstance(param, click.Option)]
        for bracketed in re.findall(r"\[[^\]\s]+\]", " ".join(texts)):
            assert bracketed in shown.output, (path, bracketed)
    assert "([drift] thresholds)" in runner.invoke(app, ["--help"]).output
    assert not list(tmp_path.iterdir())  # nothing written, nothing needed


def test_failures_names_what_is_missing(tmp_path):
    write_config(tmp_path)
    (tmp_path / "pdfs").mkdir()
    result = run("failures", cwd=tmp_path)
    assert result.returncode == 1 and "no store at" in result.stderr and "Traceback" not in result.stderr
    result = run("failures", "--source", "wiki", "--json", cwd=tmp_path)
    assert result.returncode == 2 and "no source named 'wiki'" in result.stderr


# ---- fixed costs: what a run imports, loads and starts -------------------------------------------
WRAPPED = """
import json, sys
from vectormill.cli import main as cli
sys.argv = ["vectormill", *sys.argv[1:]]
code = 0
try:
    cli.main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, **{name: name in sys.modules for name in ("torch", "sentence_transformers")}}),
      file=sys.stderr)
"""


def run_wrapped(*args, cwd, env):
    """The CLI in a real process that reports, after it finished, which model libraries it imported."""
    result = subprocess.run([sys.executable, "-c", WRAPPED, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    return result, json.loads(result.stderr.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_an_unchanged_run_imports_no_torch_and_loads_no_model(tmp_path):
    env = harness_env()
    write_corpus(tmp_path / "pdfs", {k: TOPICS[k] for k in ("chess", "baking")})
    write_config(tmp_path)

    first, imported = run_wrapped("backfill", "--json", cwd=tmp_path, env=env)
    assert imported == {"code": 0, "torch": True, "sentence_transformers": True}, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["chunks_embedded"] > 0 and summary["precision"]["used"] in ("fp32", "bf16")
    seconds = summary["seconds"]
    assert {"total", "load_model", "import_model", "wait_model", "prefect_start", "import_prefect", "elapsed"} <= set(seconds)
    assert seconds["load_model"] > 0 and seconds["prefect_start"] == 0.0  # a running server: no start to pay
    assert seconds["elapsed"] >= seconds["total"]

    unchanged, imported = run_wrapped("backfill", "--json", cwd=tmp_path, env=env)
    assert imported == {"code": 0, "torch": False, "sentence_transformers": False}, unchanged.stderr[-2000:]
    summary = json.loads(unchanged.stdout.strip().splitlines()[-1])
    assert summary["documents"]["unchanged"] == 2 and summary["chunks_embedded"] == 0
    assert summary["seconds"]["load_model"] == summary["seconds"]["import_model"] == 0.0
    assert summary["precision"] == {"requested": "auto", "used": None, "reason": "no model loaded: nothing to embed"}

    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"] + " Changed."})
    changed, imported = run_wrapped("backfill", cwd=tmp_path, env=env)  # for people: the table
    assert imported["torch"] and imported["code"] == 0, changed.stderr[-2000:]
    assert "precision: " in changed.stdout and "load_model" in changed.stdout


def _children(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.add(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the server's stop-with-parent is Linux's")
def test_without_a_server_backfill_starts_a_temporary_one_says_what_it_cost_and_leaves_none_behind(tmp_path):
    import signal
    import time

    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # fresh: its first start migrates the database
    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"]})
    write_config(tmp_path)

    process = subprocess.Popen([VECTORMILL, "backfill", "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = set()
    while process.poll() is None:
        started |= _children(process.pid)
        time.sleep(0.2)
    out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["seconds"]["prefect_start"] > 0 and summary["chunks_embedded"] > 0
    assert "note: starting a temporary Prefect server took " in err and "PREFECT_API_URL" in err
    assert started and not [pid for pid in started if _alive(pid)]  # the server stopped with the run

    # Killed outright, the run takes its server with it (it would otherwise hold a port forever).
    process = subprocess.Popen([VECTORMILL, "backfill", "--json"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (servers := _children(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers, "the run started no server"
    time.sleep(2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in servers if _alive(pid)]


@pytest.mark.usefixtures("prefect_harness")
def test_an_error_the_user_can_act_on_inside_the_flow_is_one_line_without_prefects_traceback(tmp_path):
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.settings import StoreSettings

    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"]})
    write_config(tmp_path)
    FaissStore.open(StoreSettings(path=tmp_path / "store"), model="another-model", dimension=8).close()
    result, debug = run_many([["backfill"], ["--debug", "backfill"]], cwd=tmp_path, env=harness_env())
    assert result["code"] == 1 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error:") or "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: store '{tmp_path / 'store'}' holds vectors of model "
                                                     "'another-model' (8 dims), but the config embeds with")
    assert debug["code"] == 1 and "Traceback" in debug["stderr"] and debug["stderr"].strip().endswith(errors[0][7:])
