"""Sources side by side: each source alone against all of them in one run, in one process.

    .venv/bin/python benchmarks/sources_side_by_side.py [--pages 20] [--records 40] [--notes 100]
                                                        [--wiki-rate 1] [--crm-rate 1] [--page-words 40]

Three sources, two of them throttled as real ones are: the MediaWiki test server at `--wiki-rate`
requests/s (`--pages` pages of 4 paragraphs of `--page-words` words, one `action=parse` request
each), the HubSpot test server at `--crm-rate` requests/s (`--records` records, 2 to a page) and a
folder of `--notes` one-paragraph notes. The defaults make the throttled sources wait more than
they embed; with more text (`--page-words 120 --records 240`) the run is bound by the one model
instead, and all together take what their embedding takes together. Each runs alone
into a fresh store, then all three together into another; the figure is the flow's own time
(`seconds.total` of the summary: the model is loaded beforehand, the Prefect test server started
once). Goal: all three in one run ≤ 1.15 × the slowest alone (one after another they took the sum).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.hubspot_server import hubspot_server  # noqa: E402
from tests.servers.mediawiki_server import MediaWikiServer  # noqa: E402

TOKEN = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-bench0000001"
WORDS = ("river stone harbour signal engine garden ledger window copper meadow lantern orbit "
         "quarry velvet anchor summit thunder canvas marble pilot cedar falcon hollow ember").split()


def paragraph(n: int, words: int = 40) -> str:
    return " ".join(WORDS[(n * 7 + i * 3) % len(WORDS)] for i in range(words)) + f" (item {n})."


def source_tables(wiki_url: str, crm_url: str, wiki_rate: float, crm_rate: float) -> dict[str, str]:
    return {
        "wiki": f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{wiki_url}"\n'
                f'requests_per_second = {wiki_rate}\nburst = 1\nfetch_batch_size = 4\n',
        "crm": '[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "HUBSPOT_BENCH_TOKEN"\n'
               f'base_url = "{crm_url}"\nobject_type = "companies"\nproperties = ["name", "description"]\n'
               f'page_size = 2\nrequests_per_second = {crm_rate}\nburst = 1\n',
        "files": '[[sources]]\nname = "files"\ntype = "filesystem"\nroot = "../notes"\n',
    }


def run(folder: Path, tables: list[str]) -> dict:
    from vectormill.flows.ingest import ingest

    folder.mkdir()
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n\n' + "\n".join(tables))
    return ingest(config_file=str(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--notes", type=int, default=100)
    parser.add_argument("--wiki-rate", type=float, default=1.0)
    parser.add_argument("--crm-rate", type=float, default=1.0)
    parser.add_argument("--page-words", type=int, default=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vectormill-sides-") as temp:
        base = Path(temp)
        os.environ["PREFECT_HOME"] = str(base / "prefect-home")
        os.environ["HUBSPOT_BENCH_TOKEN"] = TOKEN
        from prefect.testing.utilities import prefect_test_harness

        notes = base / "notes"
        notes.mkdir()
        for n in range(args.notes):
            (notes / f"note{n:05d}.txt").write_text(paragraph(n) + "\n")
        with prefect_test_harness(server_startup_timeout=180), hubspot_server(TOKEN) as crm, MediaWikiServer() as wiki:
            wiki.import_pages({f"Page {n}": "\n\n".join(paragraph(n * 10 + p, args.page_words) for p in range(4))
                               for n in range(args.pages)})
            for n in range(args.records):
                crm.app.add("companies", name=f"Company {n}", description=paragraph(n))
            tables = source_tables(wiki.api_url, crm.url, args.wiki_rate, args.crm_rate)
            run(base / "warm-up", [tables["files"]])  # loads the model: the timed runs find it loaded
            alone = {}
            for name, table in tables.items():
                summary = run(base / f"alone-{name}", [table])
                alone[name] = summary["seconds"]["total"]
            started = time.perf_counter()
            together = run(base / "together", list(tables.values()))
            wall = time.perf_counter() - started

        print(f"{'run':<22}{'flow s':>9}")
        for name, seconds in alone.items():
            print(f"{name + ' alone':<22}{seconds:>9.1f}")
        total = together["seconds"]["total"]
        print(f"{'all three, one run':<22}{total:>9.1f}   (wall {wall:.1f} s)")
        slowest, summed = max(alone.values()), sum(alone.values())
        print(f"one run / slowest alone: {total / slowest:.2f}x (goal <= 1.15x); "
              f"one run / sum of the three: {total / summed:.2f}x")
        for source in together["sources"]:
            print(f"  {source['name']}: {source['documents']['new']} new, seconds {source['seconds']}")


if __name__ == "__main__":
    main()
