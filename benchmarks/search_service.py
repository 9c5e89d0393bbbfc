"""`vectormill serve-search`: latency and throughput, load shedding at twice the load it serves, and a bounded load
while a writer writes, checkpoints and compacts.

    .venv/bin/python benchmarks/search_service.py [--sizes 100000 1000000] [--queries 200] [--busy-seconds 60]

For each size a store of random 384-d vectors is filled through the store API (store_scale.fill: 16-chunk
documents, checkpoints at the default cadence) and served by a real `serve-search` process. Queries are random
unit vectors (no model in the loop):
* 1 client, then 8 clients (closed loop; `--queries` searches in all for each), with the service's default
  searches at once and 8 waiting (room for every client): p50/p99 latency and queries/s;
then with `--concurrency` searches at once and `--queue` waiting (default: unset, the service's defaults):
* 1 client again (its unloaded p99 at that time), then an open loop at twice the queries/s of 8 clients for
  `--overload-seconds`: p50/p99 of the answered searches against that p99 (goal: within 2x), the share answered 429;
* (smallest size; `--busy-seconds 0`: not run) 8 clients for `--busy-seconds` while another process writes 256 vectors a write, checkpoints
  every 8 writes and compacts every 40, and adds and deletes documents near one vector: every answer must be a
  200 whose documents near that vector are exactly those live after the write it names (`lsn`).

`--attack` runs the attack mix instead (smallest size; README "The service under attack"): 8 honest keyed clients
(closed loop, `--attack-seconds` each run) alone, then beside 50 slow-loris sockets without a key (25 trickling a
header a byte a second, 25 sending whole headers of a 1,000-byte body that never comes; each reconnects a second
after the server lets it go) and 10 chunked uploaders without a key (64 KiB chunks as fast as the server takes them,
reconnecting 0.2 s after being let go), then alone again: the honest clients' p50/p99 and non-200 answers in each
run, the attackers' connections and how they ended, and the server's RSS (sampled every 0.2 s).
Figures come from one run on one machine; other work on it shows in them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from store_scale import DIMENSION, fill  # noqa: E402
from vectormill.flows.config import load_config  # noqa: E402
from tests.servers.search_service import API_KEY, search_service  # noqa: E402

K = 10
HEADERS = {"Authorization": f"Bearer {API_KEY}"}

# A writer in a process of its own (the store's writer lock is per process): bulk documents, checkpoints and
# compactions, and documents near one vector added and deleted; prints {lsn: live near documents} at the end.
WRITER = """
import json, sys, time
import numpy as np
sys.path.insert(0, {benchmarks!r})
from store_scale import document
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert
from vectormill.stores.settings import StoreSettings

target = np.array({target!r}, dtype=np.float32)
rng = np.random.default_rng(1)
live, after, number, writes = set(), {{}}, {first}, 0
deadline = time.monotonic() + {seconds}
with FaissStore.open(StoreSettings(path={path!r}, checkpoint_every_seconds=None)) as store:
    after[store.lsn] = []
    while time.monotonic() < deadline:
        operations = [document(number + n) for n in range(16)]
        number += 16
        vector = target + 0.05 * rng.standard_normal(len(target)).astype(np.float32)
        chunk = ChunkRecord(f"{{writes:016x}}" + "e" * 16, 0, f"near {{writes}}", f"near{{writes}}", None, None, 2)
        operations.append(DocumentUpsert("near", f"near/{{writes}}", "v1", "near", "near", None, (chunk,),
                                         (vector / np.linalg.norm(vector))[None, :]))
        live.add(f"near/{{writes}}")
        if writes % 3 == 2:
            operations.append(DocumentDelete("near", f"near/{{writes - 1}}"))
            live.discard(f"near/{{writes - 1}}")
        after[store.write(operations)] = sorted(live)
        writes += 1
        if writes % 8 == 0:
            store.checkpoint()
        if writes % 40 == 0:
            store.compact()
print(json.dumps({{"after": after, "writes": writes}}))
"""


def unit_vectors(count: int, seed: int) -> list[list[float]]:
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist()


def percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100)) if values else float("nan")


def closed_loop(url: str, clients: int, queries: int) -> dict[str, float]:
    """`clients` threads, each sending `queries` searches one after another; latencies of the 200s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(seed: int) -> None:
        with httpx.Client(headers=HEADERS, timeout=120) as http:
            for vector in unit_vectors(queries, seed):
                started = time.perf_counter()
                response = http.post(f"{url}/search", json={"query": vector, "k": K})
                took = time.perf_counter() - started
                with lock:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        latencies.append(took)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"clients": clients, "p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "qps": len(latencies) / elapsed, "statuses": statuses}


async def open_loop(url: str, rate: float, seconds: float) -> dict[str, float]:
    """Searches sent at `rate` per second whatever the answers (arrivals do not wait for them)."""
    results: list[tuple[int, float]] = []
    vectors = unit_vectors(256, 99)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(headers=HEADERS, timeout=120, limits=limits) as http:
        async def one(vector) -> None:
            started = time.perf_counter()
            response = await http.post(f"{url}/search", json={"query": vector, "k": K})
            results.append((response.status_code, time.perf_counter() - started))

        tasks, started, sent = [], time.perf_counter(), 0
        while (now := time.perf_counter() - started) < seconds:
            due = int(now * rate) + 1
            for _ in range(due - sent):
                tasks.append(asyncio.ensure_future(one(vectors[sent % len(vectors)])))
                sent += 1
            await asyncio.sleep(max(0.0, (sent + 1) / rate - now))  # until the next one is due: no busy polling
        await asyncio.gather(*tasks)
    answered = [took for status, took in results if status == 200]
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {"rate": rate, "sent": sent, "p50_ms": percentile(answered, 0.5) * 1000,
            "p99_ms": percentile(answered, 0.99) * 1000, "shed": statuses.get(429, 0) / max(sent, 1),
            "answered_qps": len(answered) / seconds, "statuses": statuses}


def busy(folder: Path, url: str, seconds: float) -> dict[str, object]:
    """8 clients while a writer writes, checkpoints and compacts: errors, consistency, p99."""
    target = unit_vectors(1, 7)[0]
    with open(folder / "writer.out", "w") as out:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(benchmarks=str(ROOT / "benchmarks"), target=target, first=10**8,
                                                  seconds=seconds, path=str(folder / "store"))],
            stdout=out, stderr=subprocess.PIPE, text=True)
    answers: list[dict] = []
    errors: list[str] = []

    def check(response: httpx.Response) -> None:
        if response.status_code == 200:
            answers.append(response.json())
        elif response.status_code != 429:
            errors.append(f"{response.status_code}: {response.text[:200]}")

    figures = closed_loop_until(url, 8, time.monotonic() + seconds,
                                {"query": target, "k": 100, "filter": {"source": "near"}}, check)
    _, err = writer.communicate(timeout=600)
    if writer.returncode:
        raise RuntimeError(f"writer failed: {err[-3000:]}")
    written = json.loads((folder / "writer.out").read_text())
    after = {int(lsn): set(documents) for lsn, documents in written["after"].items()}
    inconsistent = [a["lsn"] for a in answers if a["lsn"] in after and {h["document"] for h in a["hits"]} != after[a["lsn"]]]
    unknown = [a["lsn"] for a in answers if a["lsn"] not in after and a["lsn"] >= min(after)]
    return figures | {"writes": written["writes"], "answers": len(answers), "errors": len(errors),
                      "first_errors": errors[:3], "inconsistent": len(inconsistent) + len(unknown),
                      "generations_seen": len({a["generation"] for a in answers})}


def closed_loop_until(url: str, clients: int, deadline: float, body: dict, check) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(headers=HEADERS, timeout=120) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = http.post(f"{url}/search", json=body)
                took = time.perf_counter() - started
                check(response)
                with lock:
                    if response.status_code == 200:
                        latencies.append(took)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"p50_ms": percentile(latencies, 0.5) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "qps": len(latencies) / (time.perf_counter() - started)}


def cpu_flags() -> list[str]:
    """The CPU's flags that decide the speed of FAISS and the model here (README: the CPU differs by machine)."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return sorted(set(flags) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """The highest RSS of a process, sampled every 0.2 s while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.highest, self._stop = pid, rss_mib(pid), threading.Event()

    def __enter__(self) -> "RssSampler":
        def sample() -> None:
            while not self._stop.wait(0.2):
                self.highest = max(self.highest, rss_mib(self.pid))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


async def _until_let_go(host: str, port: int, head: bytes, then, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """One connection: `head`, then `then(writer)` (trickle or upload) until the server answers or closes it."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["refused"] += 1
        return
    stats["connections"] += 1
    sending = asyncio.ensure_future(then(writer))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        writer.write(head)
        answer = asyncio.ensure_future(reader.read(64))
        await asyncio.wait([answer, stopping], return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            got = answer.result()
            stats["answered 401" if got.startswith(b"HTTP/1.1 401") else "answered other" if got
                  else "closed unanswered"] += 1
        else:
            answer.cancel()
    except OSError:
        stats["reset"] += 1
    finally:
        for task in (sending, stopping):
            task.cancel()
        await asyncio.gather(sending, stopping, return_exceptions=True)
        writer.close()


async def _slow_loris(host: str, port: int, stalled_body: bool, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """Never a whole request: headers a byte a second, or whole headers of a body never sent. Reconnects a second
    after the server lets it go."""
    head = (b"POST /search HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            + (b"Content-Length: 1000\r\n\r\n" if stalled_body else b"X-Slow: "))

    async def trickle(writer) -> None:
        while not stalled_body:
            await asyncio.sleep(1)
            writer.write(b"a")

    while not stop.is_set():
        await _until_let_go(host, port, head, trickle, stop, stats)
        await asyncio.sleep(1)


async def _uploader(host: str, port: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """A chunked body without a key, 64 KiB chunks as fast as the server reads them, until it is let go."""
    chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"

    async def upload(writer) -> None:
        while True:
            writer.write(chunk)
            await writer.drain()
            stats["bytes sent"] += len(chunk)

    while not stop.is_set():
        await _until_let_go(host, port, b"POST /search HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                            upload, stop, stats)
        await asyncio.sleep(0.2)


def attackers(url: str, slow_loris: int, uploaders: int):
    """Start the attackers on a loop of their own; returns (stop, stats): call stop() to end them."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.new_event_loop()
    stats: dict[str, dict[str, int]] = {"slow-loris": {}, "uploaders": {}}
    for kind in stats.values():
        kind.update({"connections": 0, "answered 401": 0, "answered other": 0, "closed unanswered": 0, "reset": 0,
                     "refused": 0, "bytes sent": 0})
    ready = threading.Event()
    state: dict[str, object] = {}

    async def run() -> None:
        state["stop"] = stop = asyncio.Event()
        ready.set()
        await asyncio.gather(*(_slow_loris(host, int(port), n % 2 == 1, stop, stats["slow-loris"])
                               for n in range(slow_loris)),
                             *(_uploader(host, int(port), stop, stats["uploaders"]) for _ in range(uploaders)))

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    ready.wait()

    def stop() -> dict[str, dict[str, int]]:
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[union-attr]
        thread.join(30)
        return {kind: {name: count for name, count in counts.items() if count} for kind, counts in stats.items()}

    return stop, stats


def attack_mix(url: str, pid: int, seconds: float) -> dict[str, object]:
    """8 honest clients for `seconds` alone, beside the attackers, then alone again (the machine's other work
    drifts): their p50/p99 and statuses, the server's highest RSS."""
    body = {"query": unit_vectors(1, 5)[0], "k": K}
    figures: dict[str, object] = {}
    for run in ("alone before", "under attack", "alone after"):
        stop = None
        if run == "under attack":
            stop, _ = attackers(url, 50, 10)
            time.sleep(5)  # the attackers connected, and the header deadline at work
        statuses: dict[int, int] = {}
        lock = threading.Lock()

        def count(response: httpx.Response) -> None:
            with lock:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        with RssSampler(pid) as rss:
            latency = closed_loop_until(url, 8, time.monotonic() + seconds, body, count)
        figures[run] = latency | {"statuses": statuses, "server_rss_mib_max": round(rss.highest)}
        if stop is not None:
            figures["attackers"] = stop()
    alone = max(figures["alone before"]["p99_ms"], figures["alone after"]["p99_ms"])
    figures["p99 under attack / worse p99 alone"] = figures["under attack"]["p99_ms"] / alone
    figures["server rss under attack - alone before (MiB)"] = (figures["under attack"]["server_rss_mib_max"]
                                                               - figures["alone before"]["server_rss_mib_max"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="searches per client in the closed-loop runs")
    parser.add_argument("--overload-seconds", type=float, default=20)
    parser.add_argument("--busy-seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=None, help="[search_service] concurrency under 2x load")
    parser.add_argument("--queue", type=int, default=None, help="[search_service] queue under 2x load")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--attack", action="store_true", help="only the attack mix, on the smallest size")
    parser.add_argument("--attack-seconds", type=float, default=30, help="each run of the attack mix")
    options = parser.parse_args()
    report: dict[str, object] = {"cpu_flags": cpu_flags()}
    print(json.dumps(report), flush=True)
    if options.attack:
        with tempfile.TemporaryDirectory(dir=options.dir) as scratch:
            size = min(options.sizes)
            folder = Path(scratch)
            rate = fill(folder / "store", size)
            config = folder / "vectormill.toml"
            config.write_text('[store]\npath = "store"\n\n[search_service]\nqueue = 8\n')  # room for 8 clients
            with search_service(config) as service:
                closed_loop(service.url, 1, 20)
                report[str(size)] = {"fill_vectors_per_s": round(rate),
                                     "attack": attack_mix(service.url, service.process.pid, options.attack_seconds)}
        print(json.dumps(report, indent=1))
        return
    with tempfile.TemporaryDirectory(dir=options.dir) as scratch:
        for size in sorted(options.sizes):
            folder = Path(scratch) / str(size)
            folder.mkdir()
            rate = fill(folder / "store", size)
            config = folder / "vectormill.toml"
            config.write_text('[store]\npath = "store"\n\n[search_service]\nqueue = 8\n')  # room for 8 clients
            figures: dict[str, object] = {"fill_vectors_per_s": round(rate)}
            with search_service(config) as service:
                closed_loop(service.url, 1, 20)  # warm: pages of the segment files into memory
                one = closed_loop(service.url, 1, options.queries)
                eight = closed_loop(service.url, 8, options.queries // 4)
            shedding = {"concurrency": options.concurrency, "queue": options.queue}
            config.write_text('[store]\npath = "store"\n\n[search_service]\n'
                              + "".join(f"{key} = {value}\n" for key, value in shedding.items() if value is not None))
            with search_service(config) as service:
                closed_loop(service.url, 1, 20)
                # its unloaded p99 right before: the machine's other work drifts over minutes
                unloaded = closed_loop(service.url, 1, options.queries)
                overload = asyncio.run(open_loop(service.url, 2 * eight["qps"], options.overload_seconds))
                limits = load_config(config).search_service
                figures |= {"1 client": one, "8 clients": eight, "1 client before 2x load": unloaded,
                            "2x load": overload | {"concurrency": limits.searches_at_once, "queue": limits.searches_waiting},
                            "answered p99 / unloaded p99": overload["p99_ms"] / unloaded["p99_ms"]}
                if size == min(options.sizes) and options.busy_seconds > 0:
                    figures["8 clients while writing"] = busy(folder, service.url, options.busy_seconds)
            report[str(size)] = figures
            print(json.dumps({str(size): figures}, indent=1), flush=True)
            subprocess.run(["rm", "-rf", str(folder)], check=False)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
