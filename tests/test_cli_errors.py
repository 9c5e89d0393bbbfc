"""The error rule, over every command: an error the user can act on is one line on stderr and exit code
2 (config) or 1 (run); a traceback only with --debug (or VECTORMILL_DEBUG=1).

Every registered command (enumerated from the CLI, so a new command is covered without a line here) runs
against each bad setup below; the command lines of one setup share one process (tests/cli_process.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vectormill.cli.main import cli, walk

from .cli_process import run_many
from .servers.hubspot_server import hubspot_server

UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"  # port 9 (discard): nothing listens on it here
FILESYSTEM_SOURCE = '[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\n'
# What a command's only required argument gets (search TEXT, trigger SOURCE): a name the configs know.
ARGUMENT = "docs"
# Commands that start, read or serve flow runs: with an unreachable server they must say so.
TALK_TO_PREFECT = {("backfill",), ("backfill", "--deployment"), ("demo",), ("serve",), ("trigger", ARGUMENT),
                   ("runs",), ("setup-limits",)}
NEED_A_STORE = {("search", ARGUMENT), ("failures",), ("drift",), ("store", "stats"), ("store", "compact")}


def command_lines() -> dict[tuple[str, ...], bool]:
    """{command line: whether it reads the config} for every command, `demo` and `init` last (they write files)."""
    lines = {}
    for path, command in walk(cli()):
        if hasattr(command, "commands"):
            continue
        required = [ARGUMENT for param in command.params if param.required]
        lines[(*path, *required)] = any(param.name == "config" for param in command.params)
        if any("--deployment" in param.opts for param in command.params):
            lines[(*path, *required, "--deployment")] = True
    writers = [line for line in lines if line[0] in ("demo", "init")]
    return {line: lines[line] for line in [*[l for l in lines if l not in writers], *writers]}


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VECTORMILL_", "PREFECT_"))}
    # No client retries: each would wait seconds on a port that never answers.
    return dict(env, PREFECT_API_URL=UNREACHABLE_PREFECT, PREFECT_HOME=str(home / "prefect-home"), COLUMNS="200",
                PREFECT_CLIENT_MAX_RETRIES="0", **extra)


def run_all(folder: Path, env: dict[str, str], only=None) -> dict[tuple[str, ...], dict]:
    lines = [line for line in command_lines() if only is None or only(line)]
    results = run_many([list(line) for line in lines], cwd=folder, env=env)
    return {tuple(result["argv"]): result for result in results}


def error_lines(result: dict) -> list[str]:
    return result["stderr"].strip().splitlines()


def assert_rule(results: dict[tuple[str, ...], dict]) -> None:
    """Each command ends with exit 0, or with 1 or 2 and its error as one `error:` line; never a traceback."""
    for line, result in results.items():
        where = (line, result["code"], result["stderr"][-2000:])
        assert result["code"] in (0, 1, 2), where
        assert "Traceback" not in result["stderr"] + result["stdout"], where
        if result["code"]:
            # Besides warnings and notes, a report command (store verify) lists each problem it found on a
            # line of its own; anything else is the error, one line (a config: one line per problem).
            lines = [text for text in error_lines(result) if not text.startswith(("warning: ", "note: "))]
            assert lines, where
            assert all(text.startswith("error: ") for text in lines) or all(
                text.startswith("problem: ") for text in lines), where


def check(results, lines, code: int, fragment: str) -> None:
    """These command lines exit `code` with one error line that says `fragment`."""
    for line in lines:
        result = results[line]
        where = (line, result["code"], result["stderr"][-2000:])
        assert result["code"] == code and len(error_lines(result)) == 1, where
        assert error_lines(result)[0].startswith("error: ") and fragment in result["stderr"], where


@pytest.mark.parametrize("config, fragment", [
    (None, "not found: create one with `vectormill init`"),
    ("[store\npath = ", "vectormill.toml"),
    ('[store]\npath = "store"\ncolour = "red"\n\n' + FILESYSTEM_SOURCE, "colour"),
], ids=["missing", "bad-toml", "unknown-key"])
def test_a_config_problem_is_one_line_and_exit_2_in_every_command(tmp_path, config, fragment):
    (tmp_path / "pdfs").mkdir()
    if config is not None:
        (tmp_path / "vectormill.toml").write_text(config)
    results = run_all(tmp_path, environment(tmp_path), only=lambda line: line[0] not in ("demo", "init"))
    assert_rule(results)
    readers = [line for line, reads in command_lines().items() if reads and line in results]
    if config is None:  # commands that need nothing of a config may run without one
        readers = [line for line in readers if results[line]["code"]]
        assert len(readers) >= len(results) // 2
    check(results, readers, 2, fragment)


def test_no_store_yet_and_an_unreachable_prefect_server_are_one_line_and_exit_1(tmp_path):
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "pdfs" / "a.txt").write_text("Backups are tested every quarter.\n")
    (tmp_path / "vectormill.toml").write_text('[store]\npath = "store"\n\n' + FILESYSTEM_SOURCE)
    results = run_all(tmp_path, environment(tmp_path))
    assert_rule(results)
    check(results, TALK_TO_PREFECT, 1, "cannot reach the Prefect server at http://127.0.0.1:9/api")
    check(results, NEED_A_STORE, 1, "no store at")


def test_a_store_of_another_model_is_one_line_and_exit_1(tmp_path):
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.settings import StoreSettings

    (tmp_path / "pdfs").mkdir()
    (tmp_path / "vectormill.toml").write_text('[store]\npath = "store"\n\n' + FILESYSTEM_SOURCE)
    FaissStore.open(StoreSettings(path=tmp_path / "store"), model="another-model", dimension=8).close()
    results = run_all(tmp_path, environment(tmp_path), only=lambda line: line[0] not in ("demo", "init"))
    assert_rule(results)
    check(results, [("search", ARGUMENT)], 1, "holds vectors of model 'another-model'")


def test_an_unreachable_source_and_wrong_credentials_are_one_line_and_exit_1(tmp_path):
    """A source that does not answer, and one that refuses the token: the commands that reach sources fail
    on one line each (`sources check` lists every source's detail too)."""
    (tmp_path / "vectormill.toml").write_text(
        '[store]\npath = "store"\n\n'
        '[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "http://127.0.0.1:9/w/api.php"\n'
        'max_attempts = 1\n\n'
        '[[sources]]\nname = "crm"\ntype = "hubspot"\nobject_type = "companies"\nproperties = ["name"]\n'
        'token_env = "CRM_TOKEN"\nmax_attempts = 1\nbase_url = "{url}"\n')
    with hubspot_server("the-right-token") as server:
        config = tmp_path / "vectormill.toml"
        config.write_text(config.read_text().replace("{url}", server.url))
        results = run_all(tmp_path, environment(tmp_path, CRM_TOKEN="a-wrong-token"),
                          only=lambda line: line[0] not in ("demo", "init"))
    assert_rule(results)
    check(results, [("sources", "check")], 1, "2 of 2 sources failed the check")
    assert "127.0.0.1:9" in results[("sources", "check")]["stdout"]
    assert "401" in results[("sources", "check")]["stdout"]


def test_sources_check_without_a_prefect_server_leaves_a_global_rate_limit_out_and_says_so(tmp_path):
    """Holding `prefect_rate_limit` without PREFECT_API_URL would start Prefect's ephemeral server for one request
    (it hung past 120 s on a fresh PREFECT_HOME): the check goes without it and says so."""
    (tmp_path / "vectormill.toml").write_text(
        '[[sources]]\nname = "crm"\ntype = "hubspot"\nobject_type = "companies"\nproperties = ["name"]\n'
        'token_env = "CRM_TOKEN"\nprefect_rate_limit = "hubspot-api"\nbase_url = "{url}"\n')
    env = environment(tmp_path, CRM_TOKEN="the-token")
    del env["PREFECT_API_URL"]
    with hubspot_server("the-token") as server:
        server.app.add("companies", name="Acme")
        config = tmp_path / "vectormill.toml"
        config.write_text(config.read_text().replace("{url}", server.url))
        [result] = run_many([["sources", "check", "--json"]], cwd=tmp_path, env=env, timeout=90)
    assert result["code"] == 0, result["stderr"][-2000:]
    [check] = json.loads(result["stdout"])
    assert check["ok"] and "prefect_rate_limit 'hubspot-api' not held: no Prefect server" in check["detail"]
    assert not (tmp_path / "prefect-home").exists() or not list((tmp_path / "prefect-home").glob("*.db"))


def test_what_a_new_user_reads_first_says_what_it_means(tmp_path):
    (tmp_path / "pdfs").mkdir()
    results = run_many([["init"], ["--help"], ["backfill", "--help"], ["store", "stats", "--help"],
                        ["backfill", "--since", "2026-01-01T00:00:00Z", "--until", "2026-03-31"],
                        ["backfill", "--since", "2026-04-01T01:00:00+02:00", "--until", "2026-03-31T22:30"]],
                       cwd=tmp_path, env=environment(tmp_path))
    init, main_help, backfill_help, stats_help, window, reversed_window = results
    assert init["code"] == 0 and "edit the [[sources]] entry" in init["stdout"]
    for shown in (main_help, backfill_help, stats_help):
        assert shown["code"] == 0 and "--help" in shown["stdout"] and "<bool>" not in shown["stdout"], shown["stdout"]
    assert "--debug" in main_help["stdout"]
    assert "ephemeral" not in backfill_help["stdout"] and "is UTC" in backfill_help["stdout"]
    # A zoned and a plain time compare (both UTC); the run then fails on the unreachable server, on one line.
    assert window["code"] == 1 and error_lines(window) == [
        f"error: cannot reach the Prefect server at {UNREACHABLE_PREFECT} (ConnectError: [Errno 111] Connection "
        "refused): start it (`prefect server start`) or fix PREFECT_API_URL"], window["stderr"][-2000:]
    assert reversed_window["code"] == 2 and error_lines(reversed_window) == [
        "error: --since 2026-03-31T23:00:00+00:00 is after --until 2026-03-31T22:30:00+00:00"]


def test_debug_shows_the_traceback_of_an_error_the_user_can_act_on(tmp_path):
    results = run_many([["runs"], ["--debug", "runs"], ["runs"]], cwd=tmp_path, env=environment(tmp_path))
    plain, debug, again = results
    assert plain["code"] == debug["code"] == again["code"] == 1
    assert "Traceback" not in plain["stderr"] and "Traceback" not in again["stderr"]  # --debug is per command line
    assert "Traceback" in debug["stderr"] and "ConnectError" in debug["stderr"]
    assert debug["stderr"].strip().splitlines()[-1] == plain["stderr"].strip()
    [by_env] = run_many([["runs"]], cwd=tmp_path, env=environment(tmp_path, VECTORMILL_DEBUG="1"))
    assert by_env["code"] == 1 and "Traceback" in by_env["stderr"]
