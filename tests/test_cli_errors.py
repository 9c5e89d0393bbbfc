"""The error rule, over every command: an error the user can act on is one line on stderr and exit code
2 (config) or 1 (run); a traceback only with --debug (or VECTORMILL_DEBUG=1).

Every registered command (enumerated from the CLI, so a new command is covered without a line here) runs
against each bad setup below. The setups are config files side by side, so one process (tests/cli_process.py)
runs every command line of every setup: Python and Prefect are imported once.
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
UNREACHABLE = (f"cannot reach the Prefect server at {UNREACHABLE_PREFECT} (ConnectError: [Errno 111] Connection "
               "refused): start it (`prefect server start`) or fix PREFECT_API_URL")
STORE = '[store]\npath = "store"\n\n'
FILESYSTEM_SOURCE = '[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "../pdfs"\n'
# What a command's only required argument gets (search TEXT, trigger SOURCE): a name the configs know.
ARGUMENT = "docs"
# Commands that start, read or serve flow runs: with an unreachable server they must say so.
TALK_TO_PREFECT = {("backfill",), ("backfill", "--deployment"), ("serve",), ("trigger", ARGUMENT),
                   ("setup-limits",)}
NEED_A_STORE = {("search", ARGUMENT), ("failures",), ("drift",), ("store", "stats"), ("store", "compact")}
TOKEN = "the-right-token"
# Each setup: a config folder's vectormill.toml (None: none), and what every command reading it must end with
# (None: only the rule; the tests below check what some commands say).
SETUPS = {
    "missing": (None, (2, "not found: create one with `vectormill init`")),
    "bad-toml": ("[store\npath = ", (2, "vectormill.toml")),
    "unknown-key": (STORE.replace("store\"\n", "store\"\ncolour = \"red\"\n") + FILESYSTEM_SOURCE, (2, "colour")),
    "no-store": (STORE + FILESYSTEM_SOURCE, None),
    "another-model": (STORE + FILESYSTEM_SOURCE, None),
    "sources-down": (STORE + '[[sources]]\nname = "wiki"\ntype = "mediawiki"\n'
                     'api_url = "http://127.0.0.1:9/w/api.php"\nmax_attempts = 1\n\n'
                     '[[sources]]\nname = "crm"\ntype = "hubspot"\nobject_type = "companies"\nproperties = ["name"]\n'
                     'token_env = "CRM_TOKEN"\nmax_attempts = 1\nbase_url = "{hubspot}"\n', None),
}


def command_lines() -> dict[tuple[str, ...], bool]:
    """{command line: whether it reads the config} for every command but `demo` and `init` (they write files)."""
    lines = {}
    for path, command in walk(cli()):
        if hasattr(command, "commands") or path[0] in ("demo", "init"):
            continue
        required = [ARGUMENT for param in command.params if param.required]
        lines[(*path, *required)] = any(param.name == "config" for param in command.params)
        if any("--deployment" in param.opts for param in command.params):
            lines[(*path, *required, "--deployment")] = True
    return lines


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VECTORMILL_", "PREFECT_"))}
    # No client retries: each would wait seconds on a port that never answers.
    return dict(env, PREFECT_API_URL=UNREACHABLE_PREFECT, PREFECT_HOME=str(home / "prefect-home"), COLUMNS="200",
                PREFECT_CLIENT_MAX_RETRIES="0", **extra)


def error_lines(result: dict) -> list[str]:
    return result["stderr"].strip().splitlines()


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    """{(setup, command line): result} for every setup and command, plus ("", line) for the extra lines
    below; all in one process."""
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.settings import StoreSettings

    root = tmp_path_factory.mktemp("cli-errors")
    (root / "pdfs").mkdir()
    (root / "pdfs" / "a.txt").write_text("Backups are tested every quarter.\n")
    FaissStore.open(StoreSettings(path=root / "another-model" / "store"), model="another-model", dimension=8).close()
    extra = [
        ["runs"], ["--debug", "runs"], ["runs"], ["VECTORMILL_DEBUG=1", "runs"], ["demo", "--dir", str(root / "demo")],
        ["init", str(root / "new" / "vectormill.toml")], ["--help"], ["backfill", "--help"], ["store", "stats", "--help"],
        ["backfill", "--since", "2026-01-01T00:00:00Z", "--until", "2026-03-31", "--config",
         str(root / "no-store" / "vectormill.toml")],
        ["backfill", "--since", "2026-04-01T01:00:00+02:00", "--until", "2026-03-31T22:30", "--config",
         str(root / "no-store" / "vectormill.toml")],
        ["search", "", "--config", str(root / "no-store" / "vectormill.toml")],
        ["search", " \t ", "--json", "--config", str(root / "no-store" / "vectormill.toml")],
    ]
    (root / "new").mkdir()
    with hubspot_server(TOKEN) as server:
        planned = []
        for setup, (text, _) in SETUPS.items():
            folder = root / setup
            folder.mkdir(exist_ok=True)
            if text is not None:
                (folder / "vectormill.toml").write_text(text.replace("{hubspot}", server.url))
            for line, reads in command_lines().items():
                if setup != "no-store" and (not reads or setup in ("another-model", "sources-down")
                                            and line in TALK_TO_PREFECT):
                    continue  # what reads no config runs once; these stop at the unreachable server first
                planned.append((setup, line, [*line, "--config", str(folder / "vectormill.toml")] if reads else list(line)))
        planned += [("", tuple(argv), argv) for argv in extra]
        results = run_many([argv for _, _, argv in planned], cwd=root, env=environment(root, CRM_TOKEN="a-wrong-token"))
    return {(setup, line): result for (setup, line, _), result in zip(planned, results)}


def assert_rule(result: dict, where) -> None:
    """The command ended with exit 0, or with 1 or 2 and its error as one `error:` line; never a traceback."""
    where = (where, result["code"], result["stderr"][-2000:])
    assert result["code"] in (0, 1, 2), where
    assert "Traceback" not in result["stderr"] + result["stdout"], where
    if result["code"]:
        # Besides warnings and notes, a report command (store verify) lists each problem it found on a
        # line of its own; anything else is the error, one line (a config: one line per problem).
        lines = [text for text in error_lines(result) if not text.startswith(("warning: ", "note: "))]
        assert lines, where
        assert all(text.startswith("error: ") for text in lines) or all(
            text.startswith("problem: ") for text in lines), where


def check(everything, setup: str, lines, code: int, fragment: str) -> None:
    """These command lines exit `code` with one error line that says `fragment`."""
    for line in lines:
        result = everything[setup, line]
        where = (setup, line, result["code"], result["stderr"][-2000:])
        assert result["code"] == code and len(error_lines(result)) == 1, where
        assert error_lines(result)[0].startswith("error: ") and fragment in result["stderr"], where


@pytest.mark.parametrize("setup", SETUPS)
def test_every_command_keeps_the_rule(everything, setup):
    lines = command_lines()
    for line in lines:
        if (setup, line) in everything:
            assert_rule(everything[setup, line], (setup, line))
    expected = SETUPS[setup][1]
    if expected is not None:
        readers = [line for line, reads in lines.items() if reads]
        if setup == "missing":  # commands that need nothing of a config may run without one
            readers = [line for line in readers if everything[setup, line]["code"]]
            assert len(readers) >= len(lines) // 2
        check(everything, setup, readers, *expected)


def test_no_store_yet_and_an_unreachable_prefect_server_are_one_line_and_exit_1(everything):
    check(everything, "no-store", TALK_TO_PREFECT, 1, UNREACHABLE)
    check(everything, "", [("runs",)], 1, UNREACHABLE)
    check(everything, "no-store", NEED_A_STORE, 1, "no store at")
    check(everything, "no-store", [("store", "drill")], 1, "no replica configured")


def test_a_store_of_another_model_is_one_line_and_exit_1(everything):
    check(everything, "another-model", [("search", ARGUMENT)], 1, "holds vectors of model 'another-model'")


def test_an_unreachable_source_and_wrong_credentials_are_one_line_and_exit_1(everything):
    """A source that does not answer, and one that refuses the token: `sources check` lists each source's
    detail, then fails on one line."""
    result = everything["sources-down", ("sources", "check")]
    check(everything, "sources-down", [("sources", "check")], 1, "2 of 2 sources failed the check: wiki, crm")
    assert "127.0.0.1:9" in result["stdout"] and "401" in result["stdout"]


def test_what_a_new_user_reads_first_says_what_it_means(everything):
    init = everything["", ("init", next(line[1] for _, line in everything if line[:1] == ("init",)))]
    assert init["code"] == 0 and "edit the [[sources]] entry" in init["stdout"]
    for line in (("--help",), ("backfill", "--help"), ("store", "stats", "--help")):
        shown = everything["", line]
        assert shown["code"] == 0 and "--help" in shown["stdout"] and "<bool>" not in shown["stdout"], shown["stdout"]
    assert "--debug" in everything["", ("--help",)]["stdout"]
    backfill_help = everything["", ("backfill", "--help")]["stdout"]
    assert "ephemeral" not in backfill_help and "is UTC" in backfill_help
    window, reversed_window = [result for (setup, line), result in everything.items() if "--since" in line]
    # A zoned and a plain time compare (both UTC); the run then fails on the unreachable server, on one line.
    assert window["code"] == 1 and error_lines(window) == [f"error: {UNREACHABLE}"], window["stderr"][-2000:]
    assert reversed_window["code"] == 2 and error_lines(reversed_window) == [
        "error: --since 2026-03-31T23:00:00+00:00 is after --until 2026-03-31T22:30:00+00:00"]
    demo = next(result for (setup, line), result in everything.items() if line[:1] == ("demo",))
    assert_rule(demo, "demo")
    assert demo["code"] == 1 and error_lines(demo)[-1] == f"error: {UNREACHABLE}"


def test_debug_shows_the_traceback_of_an_error_the_user_can_act_on(everything):
    plain, debug, again = everything["", ("runs",)], everything["", ("--debug", "runs")], everything["", ("runs",)]
    by_env = everything["", ("VECTORMILL_DEBUG=1", "runs")]
    assert plain["code"] == debug["code"] == again["code"] == by_env["code"] == 1
    assert "Traceback" not in plain["stderr"]
    for shown in (debug, by_env):
        assert "Traceback" in shown["stderr"] and "ConnectError" in shown["stderr"]
        assert shown["stderr"].strip().splitlines()[-1] == plain["stderr"].strip()


def test_sources_check_without_a_prefect_server_leaves_a_global_rate_limit_out_and_says_so(tmp_path):
    """Holding `prefect_rate_limit` without PREFECT_API_URL would start Prefect's ephemeral server for one request
    (it hung past 120 s on a fresh PREFECT_HOME): the check goes without it and says so."""
    (tmp_path / "vectormill.toml").write_text(
        '[[sources]]\nname = "crm"\ntype = "hubspot"\nobject_type = "companies"\nproperties = ["name"]\n'
        'token_env = "CRM_TOKEN"\nprefect_rate_limit = "hubspot-api"\nbase_url = "{url}"\n')
    env = environment(tmp_path, CRM_TOKEN=TOKEN)
    del env["PREFECT_API_URL"]
    with hubspot_server(TOKEN) as server:
        server.app.add("companies", name="Acme")
        config = tmp_path / "vectormill.toml"
        config.write_text(config.read_text().replace("{url}", server.url))
        [result] = run_many([["sources", "check", "--json"]], cwd=tmp_path, env=env, timeout=90)
    assert result["code"] == 0, result["stderr"][-2000:]
    [check] = json.loads(result["stdout"])
    assert check["ok"] and "prefect_rate_limit 'hubspot-api' not held: no Prefect server" in check["detail"]
    assert not (tmp_path / "prefect-home").exists() or not list((tmp_path / "prefect-home").glob("*.db"))


def test_an_empty_search_is_refused_instead_of_answering_arbitrary_hits(everything):
    searches = [result for (setup, line), result in everything.items() if setup == "" and line[:1] == ("search",)]
    assert len(searches) == 2
    for result in searches:
        assert result["code"] == 2 and result["stdout"] == "", result
        assert error_lines(result) == ["error: the search text is empty: give the words to look for, e.g. "
                                       "`vectormill search \"backup schedule\"`"]
