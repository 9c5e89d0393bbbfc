"""Operating vectormill on a real Prefect server: serve, trigger, runs, limits, artifacts, flow states, and
what the UI shows of a served run (its logs; its pages in a headless chromium, skipped without one).

The pure parts (deployment specs, limits, prefect.yaml) run without a server; the rest share one
`prefect server start` on 127.0.0.1 and one `vectormill serve` (tests/servers/prefect_server.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from tests.cli_process import VECTORMILL, harness_env
from tests.servers.prefect_server import FINAL_STATES, STALE_RECORD
from tests.servers.processes import wait_until
from vectormill.connectors.settings import HttpSourceSettings
from vectormill.flows.config import parse_config
from vectormill.flows.deploy import DeploymentConfigError, deployment_specs, limit_specs, prefect_yaml

pytest_plugins = ["tests.servers.prefect_server"]
PREFETCH_SECONDS = 10  # how far ahead Prefect's runner picks up scheduled runs (Runner(prefetch_seconds=10))


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def table(artifact: dict) -> list[dict]:
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


# ---- pure: deployments, limits and prefect.yaml from the config --------------------------------
def config_for(tmp_path, extra: str = "", names=("docs", "wiki")):
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
    sources = "".join(f'[[sources]]\nname = "{n}"\ntype = "filesystem"\nroot = "{n}"\n\n' for n in names)
    import tomllib

    return parse_config(tomllib.loads(f'[store]\npath = "store"\n\n{sources}{extra}'), tmp_path, environ={})


def test_one_deployment_per_source_plus_all_with_their_schedules(tmp_path):
    config = config_for(tmp_path, '[deployments]\nall_schedule = "0 3 * * *"\n[deployments.schedules]\ndocs = "*/15 * * * *"\n')
    specs = {spec.full_name: spec for spec in deployment_specs(config)}
    assert list(specs) == ["ingest/docs", "ingest/wiki", "ingest/all"]
    assert (specs["ingest/docs"].cron, specs["ingest/wiki"].cron, specs["ingest/all"].cron) == ("*/15 * * * *", None, "0 3 * * *")
    assert specs["ingest/docs"].parameters("/etc/vm.toml") == {"config_file": "/etc/vm.toml", "sources": ["docs"], "full": False}
    assert specs["ingest/all"].parameters("/etc/vm.toml")["sources"] is None


def test_prefect_yaml_holds_the_same_deployments_on_a_process_pool(tmp_path):
    replica = '[[store.replicas]]\nname = "disk"\nurl = "/srv/replica"\n'
    config = config_for(tmp_path, replica + '[deployments]\nwork_pool = "ingest-pool"\nruns_per_deployment = 2\n'
                                  '[deployments.schedules]\nwiki = "0 * * * *"\n')
    document = yaml.safe_load(yaml.safe_dump(prefect_yaml(config, "/srv/vectormill.toml")))
    by_name = {d["name"]: d for d in document["deployments"]}
    assert list(by_name) == ["docs", "wiki", "all", "weekly", "store-drill"]
    audit = by_name["weekly"]  # audit/weekly: `sources audit` on Sundays, published as an artifact
    assert audit["entrypoint"] == "vectormill.flows.audit_flow:audit_sources"
    assert audit["schedules"] == [{"cron": "0 4 * * 0", "timezone": "UTC"}]
    drill = by_name["store-drill"]  # drill/store-drill: `store drill` an hour later, published as an artifact
    assert drill["parameters"] == {"config_file": "/srv/vectormill.toml", "replica": None}
    assert drill["schedules"] == [{"cron": "0 5 * * 0", "timezone": "UTC"}]
    assert drill["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    wiki = by_name["wiki"]
    assert wiki["entrypoint"] == "vectormill.flows.ingest:ingest"
    assert wiki["work_pool"]["name"] == "ingest-pool"
    assert wiki["schedules"] == [{"cron": "0 * * * *", "timezone": "UTC"}] and by_name["docs"]["schedules"] == []
    assert wiki["concurrency_limit"] == {"limit": 2, "collision_strategy": "ENQUEUE"}
    assert wiki["parameters"] == {"config_file": "/srv/vectormill.toml", "sources": ["wiki"], "full": False}
    # The flow is loaded by Prefect from that entrypoint: it must name the real flow.
    from prefect.flows import load_flow_from_entrypoint

    assert load_flow_from_entrypoint(wiki["entrypoint"]).name == "ingest"
    assert load_flow_from_entrypoint(audit["entrypoint"]).name == "audit"
    assert load_flow_from_entrypoint(drill["entrypoint"]).name == "drill"
    on_demand = config_for(tmp_path, replica + '[deployments]\ndrill_schedule = ""\n')
    without_replica = config_for(tmp_path)  # a drill could only fail: not scheduled, still there on demand
    for other in (on_demand, without_replica):
        drill = yaml.safe_load(yaml.safe_dump(prefect_yaml(other, "/srv/vectormill.toml")))["deployments"][-1]
        assert (drill["name"], drill["schedules"]) == ("store-drill", [])


def test_deployment_config_mistakes_are_named(tmp_path):
    with pytest.raises(DeploymentConfigError, match="'all' is taken"):
        deployment_specs(config_for(tmp_path, names=("docs", "all")))
    with pytest.raises(DeploymentConfigError, match="schedules names no configured source: wikki"):
        deployment_specs(config_for(tmp_path, '[deployments.schedules]\nwikki = "0 * * * *"\n'))
    from vectormill.flows.config import ConfigError

    with pytest.raises(ConfigError, match=r"deployments.schedules: .*'every hour' is not a valid cron"):
        config_for(tmp_path, '[deployments.schedules]\ndocs = "every hour"\n')


class _Http(HttpSourceSettings):
    type: Literal["test-http"] = "test-http"


def test_limits_cover_the_store_the_embedding_slots_and_each_shared_http_rate(tmp_path):
    base = config_for(tmp_path, "[deployments]\nembedding_slots = 4\n")
    http = (_Http(name="crm", requests_per_second=2.5, burst=5, prefect_rate_limit="crm-api"),
            _Http(name="crm-eu", requests_per_second=2.5, burst=5, prefect_rate_limit="crm-api"),
            _Http(name="wiki", requests_per_second=9, burst=3))
    config = SimpleNamespace(store=base.store, deployments=base.deployments, sources=base.sources + http)
    limits = {spec.name: spec for spec in limit_specs(config)}
    assert (limits["vectormill-store"].limit, limits["vectormill-store"].slot_decay_per_second) == (1, None)
    assert (limits["vectormill-embedding"].limit, limits["vectormill-embedding"].slot_decay_per_second) == (4, None)
    assert (limits["crm-api"].limit, limits["crm-api"].slot_decay_per_second) == (5, 2.5)
    assert set(limits) == {"vectormill-store", "vectormill-embedding", "crm-api"}  # wiki binds to none
    clash = SimpleNamespace(store=base.store, deployments=base.deployments,
                            sources=(http[0], _Http(name="crm-us", requests_per_second=9, prefect_rate_limit="crm-api")))
    with pytest.raises(DeploymentConfigError, match="'crm' and 'crm-us' share prefect_rate_limit 'crm-api'"):
        limit_specs(clash)


# ---- on a real server ----------------------------------------------------------------------------
@pytest.mark.slow
def test_trigger_returns_while_the_run_goes_on_and_its_artifacts_count_the_corpus(served):
    result = served.cli("trigger", "docs", "--json", "--config", str(served.config))
    assert result.returncode == 0, result.stderr
    started = last_json(result.stdout)
    # Returned before the run finished: the caller never waits on embedding.
    assert served.flow_run(started["flow_run_id"])["state_type"] not in FINAL_STATES
    assert started["url"] == f"{served.server.ui_url}/runs/flow-run/{started['flow_run_id']}"

    run = served.wait_for_run(started["flow_run_id"])
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    artifacts = served.artifacts(run["id"])
    assert {"ingest-progress-docs", "ingest-source-docs", "ingest-summary-docs"} <= set(artifacts)
    [row] = table(artifacts["ingest-source-docs"])
    assert (row["source"], row["status"], row["seen"], row["failed"], row["deleted"]) == ("docs", "completed", 4, 0, 0)
    assert row["new"] + row["unchanged"] == 4
    assert (row["chunks"] > 0) == (row["new"] > 0)
    assert float(artifacts["ingest-progress-docs"]["data"]) == 100.0
    summary = artifacts["ingest-summary-docs"]["data"]
    assert "**Status: completed**" in summary and "## Failed documents (0)" in summary
    assert artifacts["ingest-summary-docs"]["type"] == "markdown"
    # The run embedded on the task worker of `vectormill serve`, whose model stays loaded between runs.
    from vectormill.flows.artifacts import summary_from_markdown

    document = summary_from_markdown(summary)
    assert document["execution"] == {"task_runner": "local", "embedding": "task worker of vectormill serve"}
    if document["chunks_embedded"]:
        assert document["precision"]["used"] in ("fp32", "bf16")
        with served.server.client() as client:
            embedded = client.post("/task_runs/filter", json={"task_runs": {"name": {"like_": "embed-chunks"}},
                                                              "flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        assert embedded and {task["state_type"] for task in embedded} == {"COMPLETED"}


# Each served run costs a flow-run process (Prefect's imports, seconds of CPU): the tests that look at a run of notes
# with new work share one, and so do those that look at a run of mixed.
@pytest.fixture(scope="module")
def notes_run(served) -> SimpleNamespace:
    """A served run of notes, COMPLETED or not, with work whichever served test ran before: a document no run has
    seen, and a log long enough (over 64 chunks) that the run asks the task worker how many chunks a task takes."""
    sentence = f"The greenhouse sensor {uuid.uuid4().hex[:8]} reports humidity to the facilities team hourly."
    name = f"note-{uuid.uuid4().hex[:8]}.txt"
    (served.folder / "corpus" / "notes" / name).write_text(sentence + "\n", encoding="utf-8")
    log = "".join(f"Reading {i}: greenhouse bay {i % 7} logged {i * 3 % 40} percent humidity at hour {i % 24}.\n"
                  for i in range(300))
    (served.folder / "corpus" / "notes" / f"log-{uuid.uuid4().hex[:8]}.txt").write_text(log, encoding="utf-8")
    result = served.cli("trigger", "notes", "--json", "--config", str(served.config))
    assert result.returncode == 0, result.stderr
    run = served.wait_for_run(last_json(result.stdout)["flow_run_id"])
    return SimpleNamespace(run=run, sentence=sentence, document=name)


@pytest.fixture(scope="module")
def mixed_backfill(served) -> tuple[subprocess.CompletedProcess, dict]:
    """`backfill --deployment` of mixed (1 of 4 documents unreadable): its output, and its run as `runs` lists it."""
    result = served.cli("backfill", "--deployment", "--source", "mixed", "--json", "--config", str(served.config))
    assert result.returncode == 0, result.stderr
    [run] = [r for r in last_json(served.cli("runs", "--json").stdout) if r["deployment"] == "ingest/mixed"]
    return result, run


@pytest.mark.slow
def test_a_served_run_leaves_no_record_of_its_background_tasks_in_prefects_storage(served, notes_run):
    run = notes_run.run
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    # The run's vectors are durable in the store …
    search = served.cli("search", notes_run.sentence, "-k", "1", "--json", "--config", str(served.config))
    assert search.returncode == 0, search.stderr
    [hit] = json.loads(search.stdout)
    assert (hit["source"], hit["document"]) == ("notes", notes_run.document)

    # … and Prefect's records of its background tasks are gone: each task's parameters (named by its
    # Scheduled state) and its result (the storage key its final state names), in the storage that
    # the served processes use, where the task worker wrote them. (The server records a task run's
    # final state from events, a little after the run that waited for it has moved on.)
    def background_task_runs() -> list[dict] | None:
        task_runs = [task_run for task_run in served.task_runs(run["id"])
                     if task_run["states"][0]["state_details"].get("task_parameters_id")]
        return task_runs if all(task_run["states"][-1]["type"] in FINAL_STATES for task_run in task_runs) else None

    background = wait_until(background_task_runs, 60, "the final states of the run's background tasks", interval=1)
    assert {"embed-chunks", "embedding-task-chunks", "embedding-precision"} <= \
        {task_run["name"].rsplit("-", 1)[0] for task_run in background}
    for task_run in background:
        parameters_id = task_run["states"][0]["state_details"]["task_parameters_id"]
        final = task_run["states"][-1]
        assert final["type"] == "COMPLETED"
        result = Path(final["data"]["storage_key"])
        assert served.storage in result.parents
        assert not result.exists(), f"{task_run['name']}: result record {result} left behind"
        assert not list(served.storage.rglob(parameters_id)), f"{task_run['name']}: parameters left behind"


@pytest.mark.slow
def test_serve_deletes_the_records_that_killed_runs_left_behind(served):
    # The fixture wrote one, older than STALE_AFTER, before `vectormill serve` started.
    wait_until(lambda: not (served.storage / STALE_RECORD).exists(), 60, "serve to sweep the stale record")


@pytest.mark.slow
def test_a_second_run_of_the_same_source_waits_for_the_first(served):
    # Two runs due at the same moment, created well before the runner can see them (it looks
    # PREFETCH_SECONDS ahead), so it submits both in one poll however loaded the machine is:
    # triggered one after the other, the first could end before the second was even picked up.
    due = (datetime.now(timezone.utc) + timedelta(seconds=PREFETCH_SECONDS + 15)).isoformat()
    with served.server.client() as client:
        deployment = client.get("/deployments/name/ingest/docs").raise_for_status().json()
        # The idempotency key makes a request sent again after a 503 create no second run.
        ids = [client.post(f"/deployments/{deployment['id']}/create_flow_run", json={
            "parameters": {"full": True}, "idempotency_key": f"{due}-{number}",
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": due}}}).raise_for_status().json()["id"]
            for number in range(2)]
    runs = [served.wait_for_run(flow_run_id) for flow_run_id in ids]
    assert [run["state_type"] for run in runs] == ["COMPLETED", "COMPLETED"]
    first, second = sorted(runs, key=lambda run: run["start_time"])
    # One slot per deployment: the later run started only after the earlier one ended …
    assert when(second["start_time"]) >= when(first["end_time"])
    # … because the server held it back (collision strategy ENQUEUE), not by chance.
    assert "AwaitingConcurrencySlot" in [state["name"] for state in served.states(second["id"])]


@pytest.mark.slow
def test_backfill_on_the_deployment_completes_with_a_warning_within_the_failure_ratio(served, mixed_backfill):
    result, run = mixed_backfill
    summary = last_json(result.stdout)
    assert summary["documents"]["seen"] == 4 and summary["documents"]["failed"] == 1
    assert [(f["source"], f["document"]) for f in summary["failures"]] == [("mixed", "truncated.pdf")]
    assert set(summary) >= {"documents", "chunks_embedded", "failures", "seconds"}
    assert "within max_failed_ratio" in summary["warnings"][0]

    assert run["state"] == "Completed" and run["start"] and run["end"]
    assert "within max_failed_ratio" in served.flow_run(run["id"])["state"]["message"]
    text = served.artifacts(run["id"])["ingest-summary-mixed"]["data"]
    assert "**Status: completed with warnings**" in text
    assert "| mixed | truncated.pdf | not a readable PDF" in text


@pytest.mark.slow
def test_above_the_failure_ratio_the_run_fails_naming_the_source_and_listing_each_broken_document(served):
    started = last_json(served.cli("trigger", "broken", "--json", "--config", str(served.config)).stdout)
    run = served.wait_for_run(started["flow_run_id"])
    assert run["state_type"] == "FAILED"
    message = run["state"]["message"]
    assert "source 'broken': 3 of 4 documents failed (75%), above max_failed_ratio = 0.5" in message
    artifacts = served.artifacts(run["id"])  # published before the run failed
    [row] = table(artifacts["ingest-source-broken"])
    assert (row["seen"], row["failed"]) == (4, 3)
    text = artifacts["ingest-summary-broken"]["data"]
    assert "**Status: FAILED**" in text and "## Failed documents (3)" in text
    failed_section = text.split("## Failed documents")[1].split("\n## ")[0]
    lines = {line.split(" | ")[1]: line for line in failed_section.splitlines() if line.startswith("| broken | ")}
    assert set(lines) == {"truncated.pdf", "not-a-pdf.pdf", "latin1.txt"}
    assert "not a readable PDF" in lines["not-a-pdf.pdf"]
    assert "not UTF-8" in lines["latin1.txt"]

    runs = {r["id"]: r for r in last_json(served.cli("runs", "--json").stdout)}
    assert runs[run["id"]]["deployment"] == "ingest/broken" and runs[run["id"]]["state"] == "Failed"


@pytest.mark.slow
def test_setup_limits_creates_the_global_concurrency_limits(served):
    result = served.cli("setup-limits", "--json", "--config", str(served.config))
    assert result.returncode == 0, result.stderr
    assert {spec["name"] for spec in last_json(result.stdout)} == {"vectormill-store", "vectormill-embedding"}
    with served.server.client() as client:
        limits = {limit["name"]: limit for limit in client.post("/v2/concurrency_limits/filter", json={}).json()}
    assert limits["vectormill-store"]["limit"] == 1 and limits["vectormill-embedding"]["limit"] == 1


@pytest.mark.slow
def test_deployments_carry_schedules_parameters_and_the_per_source_limit(served):
    with served.server.client() as client:
        deployments = {d["name"]: d for d in client.post("/deployments/filter", json={}).json()}
    docs, all_ = deployments["docs"], deployments["all"]
    assert [s["schedule"]["cron"] for s in docs["schedules"]] == ["0 * * * *"]
    assert [s["schedule"]["cron"] for s in all_["schedules"]] == ["0 3 * * *"]
    assert deployments["mixed"]["schedules"] == []
    assert docs["parameters"] == {"config_file": str(served.config), "sources": ["docs"], "full": False}
    assert docs["global_concurrency_limit"]["limit"] == 1
    assert docs["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    drill = deployments["store-drill"]  # served like the others: `store drill` of the first replica, on demand
    assert drill["schedules"] == []  # while the store has no replica (test_prefect_yaml_…: scheduled with one)
    assert drill["parameters"] == {"config_file": str(served.config), "replica": None}


def test_the_task_worker_embeds_only_for_local_runs():
    from vectormill.flows.execution import ExecutionSettings

    assert ExecutionSettings(embedding_task_worker=True).embedding_task_worker
    with pytest.raises(ValueError, match="embedding_task_worker needs task_runner = \"local\""):
        ExecutionSettings(task_runner="dask", embedding_task_worker=True)


# ---- Prefect's records of the background tasks (flows/task_records.py) ----------------------------
def test_a_task_runs_records_are_its_parameters_and_results_in_the_records_folder(tmp_path):
    from prefect.results import ResultRecordMetadata
    from prefect.serializers import PickleSerializer
    from prefect.states import Completed, Failed, Pending, Scheduled

    from vectormill.flows.task_records import record_paths

    folder = tmp_path / "records"
    scheduled = Scheduled()
    scheduled.state_details.task_parameters_id = uuid.uuid4()
    completed = Completed(data=ResultRecordMetadata(storage_key=str(folder / "a1b2"), serializer=PickleSerializer()))
    elsewhere = Failed(data=ResultRecordMetadata(storage_key=str(tmp_path / "c3d4"), serializer=PickleSerializer()))
    assert record_paths([scheduled, Pending(), completed, elsewhere], folder) == {
        folder / "parameters" / str(scheduled.state_details.task_parameters_id), folder / "a1b2"}


def test_the_sweep_deletes_only_records_older_than_a_day(tmp_path):
    import os
    import time

    from vectormill.flows.task_records import STALE_AFTER, sweep

    now = time.time()
    ages = {"parameters/old": STALE_AFTER.total_seconds() + 60, "oldresult": STALE_AFTER.total_seconds() + 60,
            "parameters/live": 60, "liveresult": 0}
    for name, age in ages.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"record")
        os.utime(path, (now - age, now - age))
    assert sweep(tmp_path, now) == 2
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "liveresult", "parameters/live"]
    assert sweep(tmp_path / "never-written", now) == 0


# Both ways of serving: with the task worker and the model kept (SIGTERM hung there), and the runner alone.
@pytest.mark.parametrize("signum, model", [(signal.SIGTERM, "--warm-model"), (signal.SIGINT, "--no-warm-model")],
                         ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_sigterm_and_sigint(prefect_harness, tmp_path, signum, model):
    """A scheduler stops `vectormill serve` with SIGTERM (a terminal with Ctrl-C): it winds down and exits 0,
    pausing its deployments' schedules as Prefect's runner does on a clean stop, and leaves no process behind."""
    import httpx

    source = f"stop-{signum.name.lower()}"
    (tmp_path / "docs").mkdir()
    # Limits of its own: serve creates them on the harness's server, where the default names would be held
    # by the runs other tests kill (a leaked slot stalls every later run there until its lease ends).
    (tmp_path / "vectormill.toml").write_text(
        f'[store]\npath = "store"\n[deployments]\nstore_limit = "{source}-store"\n'
        f'embedding_limit = "{source}-embedding"\n'
        f'[[sources]]\nname = "{source}"\ntype = "filesystem"\nroot = "docs"\n')
    env = harness_env(PREFECT_HOME=str(tmp_path / "home"), PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "storage"))
    api = env["PREFECT_API_URL"]

    def deployment() -> dict | None:
        found = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [source]}}}, timeout=10)
        return next(iter(found.raise_for_status().json()), None)

    log = tmp_path / "serve.log"
    process = subprocess.Popen([VECTORMILL, "serve", model], cwd=tmp_path, env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # READY: its runner has polled the server for the deployment's runs, so it is serving.
        wait_until(lambda: process.poll() is not None or (found := deployment()) and found["status"] == "READY",
                   120, "vectormill serve to poll for its deployment's runs")
        assert process.poll() is None, log.read_text()[-3000:]
        process.send_signal(signum)
        code = process.wait(60)  # before the fix it ignored SIGTERM: the kill below, and a failed test
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    assert deployment()["paused"], output[-3000:]  # the runner's clean shutdown ran, not a kill
    with pytest.raises(ProcessLookupError):  # no flow run, task worker or server child outlived it
        os.killpg(process.pid, 0)


@task(name="embed-nothing", cache_policy=NO_CACHE, retries=1)
def embed_nothing(texts: list[str]) -> None:
    raise ValueError(f"cannot embed {len(texts)} texts")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_background_tasks_records_are_deleted_when_the_run_takes_its_error(tmp_path):
    import asyncio
    import threading

    from prefect import flow
    from prefect.task_worker import TaskWorker

    from vectormill.flows.execution import TaskWorkerExecution
    from vectormill.flows.task_records import with_records_storage

    records = tmp_path.resolve() / "records"
    stop = threading.Event()

    async def work() -> None:  # a task worker, as `vectormill serve` runs it, until the test ends
        serving = asyncio.create_task(TaskWorker(with_records_storage(embed_nothing, records)).start())
        await asyncio.to_thread(stop.wait)
        serving.cancel()

    worker = threading.Thread(target=asyncio.run, args=(work(),), daemon=True)
    worker.start()

    @flow
    def embed_on_the_worker() -> None:
        TaskWorkerExecution(records=records).run(embed_nothing, {"texts": ["a", "b"]})

    try:
        with pytest.raises(ValueError, match="cannot embed 2 texts"):  # the error, read from its record
            embed_on_the_worker()
    finally:
        stop.set()
        worker.join(30)
    assert (records / "parameters").is_dir()  # Prefect wrote the task's records there …
    assert [path for path in records.rglob("*") if path.is_file()] == []  # … and the run deleted them


def test_trigger_without_a_server_says_how_to_get_one(tmp_path):
    config = tmp_path / "vectormill.toml"
    (tmp_path / "docs").mkdir()
    config.write_text('[store]\npath = "store"\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "docs"\n')
    env = {key: value for key, value in __import__("os").environ.items() if key != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    result = subprocess.run([VECTORMILL, "trigger", "docs", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no Prefect server: set PREFECT_API_URL" in result.stderr
    unknown = subprocess.run([VECTORMILL, "trigger", "wiki", "--config", str(config)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "no source named 'wiki'" in unknown.stderr


class NotStartedYet:
    """Stands in for Prefect's distributed future during the race a loaded server shows now and then
    (the task worker runs the task, the server has no state for it yet): that race cannot be
    brought about on demand, the exact error Prefect raises can."""

    def __init__(self, reads_without_state: int, error: str | None = None):
        self.reads_without_state = reads_without_state
        self.error = error
        self.reads = 0

    def result(self) -> str:
        self.reads += 1
        if self.reads <= self.reads_without_state:
            raise RuntimeError(self.error or f"Task run {uuid.uuid4()} has no state which means it hasn't started yet.")
        return "vectors"


def test_a_background_task_that_has_no_state_yet_is_read_again_not_failed():
    from vectormill.flows.execution import _await_started

    future = NotStartedYet(reads_without_state=2)
    assert _await_started(future) == "vectors" and future.reads == 3
    # Any other error is the task's own: raised at once.
    other = NotStartedYet(reads_without_state=1, error="the model is gone")
    with pytest.raises(RuntimeError, match="the model is gone"):
        _await_started(other)
    assert other.reads == 1
    # A task that never gets a state fails the run once the patience is spent, with Prefect's error.
    never = NotStartedYet(reads_without_state=10**6)
    with pytest.raises(RuntimeError, match="has no state"):
        _await_started(never, patience_s=0.5)
    assert never.reads >= 2


# ---- backfill --deployment waits at most --timeout --------------------------------------------
def test_the_default_wait_follows_the_deployments_recent_runs():
    from vectormill.flows.remote import DEFAULT_WAIT_SECONDS, MIN_WAIT_SECONDS, expected_seconds

    assert expected_seconds([]) == DEFAULT_WAIT_SECONDS == 3600
    assert expected_seconds([12.0, 30.0]) == MIN_WAIT_SECONDS  # short runs: time left for a pick-up
    assert expected_seconds([400.0, 1500.0, 90.0]) == 4500.0


def test_stopping_the_wait_says_whether_the_run_never_started_or_is_still_running():
    from vectormill.flows.remote import stopped_waiting

    scheduled = SimpleNamespace(id="r1", start_time=None, state=SimpleNamespace(name="Late"))
    running = SimpleNamespace(id="r2", start_time=datetime.now(timezone.utc), state=SimpleNamespace(name="Running"))
    assert stopped_waiting(scheduled, "ingest/docs", 30).startswith(
        "no worker or `vectormill serve` picked up flow run r1 of ingest/docs within 30 s: is anything serving "
        "ingest/docs? The run stays Late")
    assert stopped_waiting(running, "ingest/docs", 7.5).startswith(
        "flow run r2 of ingest/docs is still running after 7.5 s (--timeout); it goes on")


def test_backfill_on_a_deployment_nothing_serves_stops_waiting_after_its_timeout(served, tmp_path):
    """`served` serves other deployments; ingest/lonely exists on the server, and nothing serves it."""
    with served.server.client() as client:
        flow = client.post("/flows/", json={"name": "ingest"}).raise_for_status().json()
        client.post("/deployments/", json={"name": "lonely", "flow_id": flow["id"]}).raise_for_status()
    (tmp_path / "docs").mkdir()
    config = tmp_path / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n[[sources]]\nname = "lonely"\ntype = "filesystem"\nroot = "docs"\n')
    result = served.cli("backfill", "--deployment", "--source", "lonely", "--timeout", "2", "--config", str(config),
                        timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("waiting up to 2 s for flow run ") and len(lines) == 2, result.stderr
    assert lines[1].startswith("error: no worker or `vectormill serve` picked up flow run ")
    assert "of ingest/lonely within 2 s" in lines[1] and "Traceback" not in result.stderr
    flow_run_id = lines[1].split("flow run ")[1].split()[0]
    assert served.flow_run(flow_run_id)["state_type"] == "SCHEDULED"  # left as it was: nothing cancelled
    wrong = served.cli("backfill", "--timeout", "2", "--config", str(config))
    assert wrong.returncode == 2 and wrong.stderr.strip() == "error: --timeout applies to --deployment runs only"


# ---- what people see of served runs: the UI's logs and pages -------------------------------------
# (Here rather than in files of their own: every test of `served` in one module shares one server and one
# `vectormill serve`, which --dist loadfile would otherwise start again on each worker that has such a file.)
@pytest.mark.slow
def test_served_runs_log_task_runs_and_per_source_lines_to_the_ui(served, notes_run):
    run_id = notes_run.run["id"]  # a run with new documents: it has task runs
    assert notes_run.run["state_type"] == "COMPLETED"

    def info_logs():
        with served.server.client() as client:
            response = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
            response.raise_for_status()
        return [log for log in response.json() if log["level"] == logging.INFO]

    # The run's process ships its logs in batches, so some may land after the run's final state.
    def shipped():
        info = info_logs()
        return (any(log["message"].startswith("source notes: {") for log in info)  # the per-source line
                and any(log["task_run_id"] for log in info))  # task runs: the run's progress

    wait_until(shipped, 60, "the run's per-source and task-run lines at INFO", interval=1)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran (the UI fetches the run and its artifacts from the API)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=20000", "--window-size=1400,2400", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# Uses Debian's chromium (`apt-get install chromium`) with --dump-dom, which runs the UI's JavaScript against
# the live server before printing the page.
@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_the_run_page_shows_the_summary_artifact(served, mixed_backfill, tmp_path):
    run = served.flow_run(mixed_backfill[1]["id"])
    assert run["state_type"] == "COMPLETED"

    # The run's page (at the address `trigger` prints): name, state and the warning it logged. (Its Artifacts tab
    # appears only once the run has loaded, so --dump-dom cannot open it; the artifact's own page, linked from it, can.)
    page = rendered(f"{served.server.ui_url}/runs/flow-run/{run['id']}", tmp_path)
    assert run["name"] in page and "Completed" in page
    assert "mixed: truncated.pdf: not a readable PDF" in page
    summary = served.artifacts(run["id"])["ingest-summary-mixed"]
    artifact_page = rendered(f"{served.server.ui_url}/artifacts/artifact/{summary['id']}", tmp_path)
    assert run["name"] in artifact_page  # the artifact names the run it belongs to
    assert "vectormill ingest: mixed" in artifact_page
    assert "Status: completed with warnings" in artifact_page
    assert "truncated.pdf" in artifact_page
