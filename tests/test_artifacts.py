"""The artifacts' keys and rendering (pure: no server)."""

from __future__ import annotations

import re

import pytest

from vectormill.flows.artifacts import (
    MARKDOWN_FAILURES,
    progress_key,
    run_target,
    slug,
    source_key,
    source_row,
    summary_from_markdown,
    summary_key,
    summary_markdown,
)

KEY = re.compile(r"^[a-z0-9-]+$")


def source(name: str, failed: int = 0, status: str = "completed", error: str | None = None) -> dict:
    return {
        "name": name, "status": status, "error": error,
        "documents": {"seen": 10, "new": 4, "changed": 1, "unchanged": 5 - failed, "deleted": 2, "failed": failed},
        "chunks_embedded": 40, "chunks_reused": 3,
        "failures": [{"source": name, "document": f"bad-{i}.pdf", "reason": f"reason {i}"} for i in range(failed)],
        "seconds": {"list": 0.5, "fetch_parse_chunk": 1.25, "embed": 2.0, "write": 0.25},
    }


def summary(*sources: dict, **extra) -> dict:
    documents = {key: sum(s["documents"][key] for s in sources) for key in sources[0]["documents"]}
    return {
        "documents": documents,
        "chunks_embedded": sum(s["chunks_embedded"] for s in sources),
        "chunks_reused": 3,
        "failures": [f for s in sources for f in s["failures"]],
        "seconds": {"list": 0.5, "embed": 4.0, "total": 9.0},
        "sources": list(sources),
        "store": {"path": "/data/store", "vectors": 80, "documents": 20, "generation": 3},
        "warnings": [],
        **extra,
    }


@pytest.mark.parametrize("name", ["docs", "Docs", "team wiki", "docs_v2", "ÜBER", "---", "all"])
def test_keys_hold_only_lowercase_letters_digits_and_dashes(name):
    for key in (progress_key(run_target([name])), source_key(name), summary_key(run_target([name]))):
        assert KEY.match(key), key


def test_clean_names_are_kept_and_changed_ones_stay_distinct():
    assert slug("docs") == "docs"
    assert source_key("wiki-2") == "ingest-source-wiki-2"
    assert slug("Docs") != slug("docs") and slug("Docs").startswith("docs-")
    assert slug("team wiki") != slug("team_wiki")
    assert slug("Docs") == slug("Docs")  # stable across runs: the UI's history needs it
    assert run_target(None) == "all" and summary_key(run_target(None)) == "ingest-summary-all"
    assert run_target(["a", "b"]) == "a-b"


def test_source_row_holds_the_counts_and_total_seconds():
    row = source_row(source("docs", failed=2))
    assert row == {"source": "docs", "status": "completed", "seen": 10, "new": 4, "changed": 1, "unchanged": 3,
                   "deleted": 2, "failed": 2, "chunks": 40, "chunks_reused": 3, "seconds": 4.0}


def test_summary_lists_every_failed_document_with_its_reason_and_the_throughput():
    data = summary(source("docs", failed=2), source("wiki"))
    data["failures"].append({"source": "wiki", "document": "a|b <script>", "reason": "line one\nline two"})
    text = summary_markdown(data, "all")
    assert "**Status: completed**" in text
    assert "| docs | bad-0.pdf | reason 0 |" in text and "| docs | bad-1.pdf | reason 1 |" in text
    # Table syntax and HTML in names and reasons are escaped, newlines folded.
    assert "| wiki | a\\|b &lt;script&gt; | line one line two |" in text
    assert "## Failed documents (3)" in text
    assert "| 80 | 3 | 4 | 20 |" in text  # chunks embedded, reused, embed seconds, chunks/s
    assert summary_from_markdown(text) == data


def test_warnings_and_failure_are_stated_first():
    data = summary(source("docs", failed=1), warnings=["source 'docs': 1 of 10 documents failed"])
    assert "**Status: completed with warnings**" in summary_markdown(data, "docs")
    assert "> **Warning:** source 'docs': 1 of 10 documents failed" in summary_markdown(data, "docs")
    failed = summary_markdown(summary(source("wiki", status="failed", error="HTTP 503 after 6 attempts")), "wiki",
                              failure="source 'wiki' failed: HTTP 503 after 6 attempts")
    assert failed.index("**Status: FAILED**") < failed.index("> **Error:** source 'wiki' failed: HTTP 503")
    assert "Source **wiki** failed: HTTP 503 after 6 attempts" in failed


def test_long_failure_lists_are_cut_in_the_markdown_but_whole_in_the_json():
    data = summary(source("docs", failed=MARKDOWN_FAILURES + 5))
    text = summary_markdown(data, "docs")
    assert f"bad-{MARKDOWN_FAILURES - 1}.pdf" in text.split("## Summary (JSON)")[0]
    assert f"bad-{MARKDOWN_FAILURES}.pdf" not in text.split("## Summary (JSON)")[0]
    assert "… and 5 more" in text
    assert len(summary_from_markdown(text)["failures"]) == MARKDOWN_FAILURES + 5


def test_optional_sections_render_only_when_present():
    plain = summary_markdown(summary(source("docs")), "docs")
    assert "## Retries" not in plain and "## GPU/CPU telemetry" not in plain and "## Replicas" not in plain
    text = summary_markdown(summary(
        source("wiki"),
        retries={"wiki": {"retries": 7, "rate_limit_waits": 3, "wait_seconds": 1.5}},
        telemetry={"devices": [{"device": "gpu0", "utilization_pct": 87.5}], "cpu_percent": 41.0},
        replicas=[{"replica": "s3://bucket/store", "generation": 3, "status": "in sync"}],
    ), "wiki")
    assert "## Retries and rate-limit waits" in text
    assert "| source | retries | rate_limit_waits | wait_seconds |" in text and "| wiki | 7 | 3 | 1.5 |" in text
    assert "## GPU/CPU telemetry" in text and "| gpu0 | 87.5 |" in text and "| cpu_percent | 41 |" in text
    assert "## Replicas" in text and "| s3://bucket/store | 3 | in sync |" in text


def test_the_precision_and_the_fixed_costs_are_shown():
    precision = {"requested": "auto", "chosen": "bf16", "used": "bf16", "reason": "the CPU reports avx512_bf16",
                 "min_cosine": 0.999, "probe_min_cosine": 0.99996, "probe_texts": 8, "probe_seconds": 0.41,
                 "fallback": None}
    text = summary_markdown(summary(source("docs"), precision=precision,
                                    seconds={"total": 9.0, "import_model": 4.5, "load_model": 1.2}), "docs")
    assert "## Embedding precision" in text and "| used | bf16 |" in text and "| probe_seconds | 0.41 |" in text
    assert "| total | import_model | load_model |" in text
    unused = summary_markdown(summary(source("docs"), precision={"requested": "auto", "used": None,
                                                                 "reason": "no model loaded: nothing to embed"}), "docs")
    assert "| reason | no model loaded: nothing to embed |" in unused


def test_a_markdown_without_json_is_refused_clearly():
    with pytest.raises(ValueError, match="no JSON summary"):
        summary_from_markdown("# something else")
