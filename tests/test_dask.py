"""The ingest flow on a real Dask LocalCluster of 2 worker processes through prefect-dask: the same store
as a local run, a worker SIGKILLed mid-run losing nothing, and a source's rate limit held across workers."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vectormill.connectors.settings import HubSpotSourceSettings
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.flows.config import load_config
from vectormill.flows.execution import ExecutionSettings, cluster_kwargs, divided_rate, fetch_settings
from vectormill.stores.faiss_store import FaissStore

from .corpus import write_corpus
from .servers.hubspot_server import hubspot_server
from .servers.store_batches import stored_vectors

TOPICS = {f"topic{i:02d}": f"Distinct sentence number {i} about subject {i * 7919 % 1000}." for i in range(16)}
TOKEN = "pat-na1-5e1f0c2a-0000-4d4d-8e8e-dask00000001"
TOKEN_ENV = "HUBSPOT_DASK_TEST_TOKEN"


# ---- the choice of rate limits (pure) ---------------------------------------------------------
def hubspot_settings(**overrides):
    return HubSpotSourceSettings(**{"name": "crm", "type": "hubspot", "object_type": "companies",
                                    "properties": ["name"], "token_env": TOKEN_ENV, "requests_per_second": 12,
                                    "burst": 3, **overrides})


def test_the_rate_limit_is_divided_among_the_processes_that_fetch_unless_a_server_enforces_it():
    assert divided_rate(12, 3, 3) == (4, 1)
    assert divided_rate(10, 2, 3) == (10 / 3, 1)  # a burst below the process count: 1 each, at least

    divided = fetch_settings(hubspot_settings(), processes=3, server_present=True)
    assert (divided.requests_per_second, divided.burst, divided.name) == (4, 1, "crm")
    shared = hubspot_settings(prefect_rate_limit="hubspot-api")
    assert fetch_settings(shared, processes=3, server_present=True) is shared
    assert fetch_settings(shared, processes=3, server_present=False).requests_per_second == 4  # no server: divided
    assert fetch_settings(hubspot_settings(), processes=1, server_present=False).requests_per_second == 12
    files = FilesystemSourceSettings(name="docs", type="filesystem", root=Path(__file__).parent)
    assert fetch_settings(files, processes=3, server_present=False) is files


def test_execution_settings():
    assert ExecutionSettings().task_runner == "local"
    with pytest.raises(ValidationError, match="need task_runner"):
        ExecutionSettings(dask_address="tcp://scheduler:8786")
    with pytest.raises(ValidationError):
        ExecutionSettings(task_runner="ray")
    settings = ExecutionSettings(task_runner="dask", dask_workers=3, dask_threads_per_worker=2, gpu_resources=True)
    assert cluster_kwargs(settings) == {"n_workers": 3, "threads_per_worker": 2, "processes": True,
                                        "resources": {"GPU": 1}}


def test_the_flow_and_its_tasks_can_be_shipped_to_dask_workers():
    """prefect-dask pickles each task and, in its context, the flow, by value with the globals they name."""
    import cloudpickle

    from vectormill.flows.ingest import ingest
    from vectormill.flows.pipeline import embed_chunks, embedding_dimension, embedding_task_chunks, fetch_parse_chunk

    for shipped in (ingest, embed_chunks, embedding_dimension, embedding_task_chunks, fetch_parse_chunk):
        assert cloudpickle.loads(cloudpickle.dumps(shipped)).name == shipped.name


# ---- real clusters ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def worker_env(prefect_harness):
    """What worker processes inherit when started: the harness's API (else each starts a server) and a token.

    Each worker process would import torch and sentence-transformers afresh (seconds of CPU each, for five or
    more workers here): they start from a forkserver that imported those two libraries once. Our modules and
    Prefect are still imported by each worker itself, as on a user's spawned workers."""
    import multiprocessing

    import dask
    from distributed.utils import get_mp_context
    from prefect.settings import PREFECT_API_URL

    with pytest.MonkeyPatch.context() as patch, \
            dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        patch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        patch.setenv(TOKEN_ENV, TOKEN)
        get_mp_context()  # sets Dask's own preload list once: ours replaces it
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload(["distributed", "torch", "sentence_transformers"])
        yield


@pytest.fixture(scope="module")
def cluster(worker_env):
    """An existing cluster (as a user's would be), reached through `dask_address`."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as running, \
            Client(running, set_as_default=False) as client:
        yield running, client


def write_config(folder: Path, store: str, execution: str = "", source: str | None = None,
                 embedding: str = "task_chunks = 16\n") -> Path:
    source = source or 'name = "docs"\ntype = "filesystem"\nroot = "pdfs"\nfetch_batch_size = 2\n'
    config = folder / f"{store}.toml"
    config.write_text(f'[store]\npath = "{store}"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
                      f'[embedding]\n{embedding}\n{execution}\n[[sources]]\n{source}')
    return config


def snapshot(config_file: Path):
    """Everything stored but the vectors (compared exactly), and the vectors by chunk id."""
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        documents = store.db.execute("SELECT source, document, version, title, location, modified, chunks "
                                     "FROM documents ORDER BY source, document").fetchall()
        chunks = store.db.execute("SELECT chunk_id, source, document, position, text, content_hash, page, last_page, "
                                  "tokens FROM chunks ORDER BY chunk_id").fetchall()
        distinct = store.db.execute("SELECT count(DISTINCT chunk_id) FROM chunks").fetchone()[0]
        assert distinct == len(chunks) == store.vector_count() == len(store.index_ids())
        return documents, chunks, store.chunk_vectors()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, worker_env):
    """One corpus, and the store a local run makes of it."""
    from vectormill.flows.ingest import ingest

    folder = tmp_path_factory.mktemp("dask-corpus")
    write_corpus(folder / "pdfs", TOPICS)
    local = write_config(folder, "store-local")
    summary = ingest(config_file=str(local))
    assert summary["execution"] == {"task_runner": "local"}
    return folder, snapshot(local)


def assert_same_store(got, expected):
    documents, chunks, vectors = got
    assert documents == expected[0]
    assert chunks == expected[1]
    assert vectors.keys() == expected[2].keys()
    assert max(float(np.abs(vectors[k] - expected[2][k]).max()) for k in vectors) < 1e-5


@pytest.mark.slow
def test_a_local_cluster_of_two_workers_makes_the_store_of_a_local_run(corpus):
    from vectormill.flows.ingest import ingest

    folder, expected = corpus
    # task_chunks unset: a worker plans it (64 there, on CPU) and the store is the same whatever the split.
    config = write_config(folder, "store-dask", '[execution]\ntask_runner = "dask"\ndask_workers = 2\n'
                                                'dask_threads_per_worker = 1\ngpu_resources = true\n')

    summary = ingest(config_file=str(config))

    assert summary["execution"]["task_runner"] == "dask" and summary["execution"]["workers"] == 2
    assert summary["documents"]["new"] == len(TOPICS) and summary["failures"] == []
    assert_same_store(snapshot(config), expected)
    assert summary["drift"]["docs"]["status"] == "first baseline"


def embedding_keys(client) -> dict[str, list[str]]:
    return {worker: [key for key in keys if "embed" in str(key)] for worker, keys in client.processing().items()}


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(corpus, cluster):
    from vectormill.flows.ingest import ingest

    folder, expected = corpus
    running, client = cluster
    # One embedding in flight: the writer takes each batch early, so most embedding follows the first write.
    config = write_config(folder, "store-killed", f'[execution]\ntask_runner = "dask"\nembed_tasks_in_flight = 1\n'
                                                  f'dask_address = "{running.scheduler_address}"\n')
    store = load_config(config).store
    killed: list[tuple[str, list[str]]] = []
    stop = threading.Event()

    def kill_a_busy_worker_after_the_first_write():
        while not stop.is_set():
            written = stored_vectors(store) > 0
            busy = {worker: keys for worker, keys in embedding_keys(client).items() if keys} if written else {}
            if busy:
                worker, keys = next(iter(busy.items()))
                os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                killed.append((worker, keys))
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker_after_the_first_write, daemon=True)
    killer.start()
    try:
        summary = ingest(config_file=str(config))
    finally:
        stop.set()
        killer.join(timeout=10)

    assert killed, "no worker was embedding after the first write: make the corpus larger"
    print(f"killed {killed[0][0]} while it was embedding {killed[0][1]}")
    assert summary["documents"]["new"] == len(TOPICS) and summary["failures"] == []
    assert summary["chunks_embedded"] == len(expected[1])
    assert_same_store(snapshot(config), expected)


@pytest.mark.slow
def test_a_sources_rate_limit_holds_across_two_workers(cluster, tmp_path):
    from vectormill.flows.ingest import ingest

    running, client = cluster
    with hubspot_server(TOKEN) as server:
        for n in range(40):
            server.app.add("companies", name=f"Company {n}", description=f"Makes widget model {n} for export.")
        config = write_config(
            tmp_path, "store", f'[execution]\ntask_runner = "dask"\ndask_address = "{running.scheduler_address}"\n',
            source=f'name = "crm"\ntype = "hubspot"\nbase_url = "{server.url}"\nobject_type = "companies"\n'
                   f'properties = ["name", "description"]\ntoken_env = "{TOKEN_ENV}"\npage_size = 10\n'
                   'requests_per_second = 12\nburst = 3\nfetch_batch_size = 4\n')

        summary = ingest(config_file=str(config))

        fetched = [r for r in server.requests if r.path.rsplit("/", 1)[-1].isdigit()]
        assert summary["documents"]["new"] == 40 and summary["failures"] == []
        # Records are fetched one by one on the workers (the listing's copies stay in the flow process): each
        # at least once; twice only where a busy machine made Dask run a fetch task again or the client retry.
        assert len({r.path for r in fetched}) == 40 and len(fetched) >= 40
        assert server.max_requests_in_window(1.0) <= 12 + 3
        assert server.requests[-1].arrived - server.requests[0].arrived >= (len(server.requests) - 3) / 12


@pytest.mark.slow
def test_gpu_resources_that_no_worker_offers_fail_the_run_with_advice(cluster, tmp_path):
    from vectormill.flows.ingest import ingest

    running, _ = cluster
    (tmp_path / "pdfs").mkdir()
    config = write_config(tmp_path, "store", f'[execution]\ntask_runner = "dask"\n'
                                             f'dask_address = "{running.scheduler_address}"\ngpu_resources = true\n')
    with pytest.raises(RuntimeError, match="no worker of the Dask cluster .* offers the resource 'GPU'"):
        ingest(config_file=str(config))
