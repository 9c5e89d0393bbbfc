"""The HubSpot source against a real HubSpot-shaped CRM v3 server on 127.0.0.1."""

import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from vectormill.connectors.base import DocumentRef, IncrementalSource
from vectormill.connectors.errors import DocumentEmpty, DocumentError, DocumentGone, SourceError
from vectormill.connectors.hubspot import HubSpotSource, format_time, parse_time
from vectormill.connectors.settings import HubSpotSourceSettings
from vectormill.flows.config import parse_config
from vectormill.flows.config import ConfigError

from .servers.hubspot_server import hubspot_server, iso

TOKEN = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-1234567890ab"
TOKEN_ENV = "HUBSPOT_TEST_TOKEN"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with hubspot_server(TOKEN) as running:
        yield running


def source_for(server, **overrides) -> HubSpotSource:
    values = {"name": "crm", "type": "hubspot", "base_url": server.url, "object_type": "companies",
              "properties": ["name", "domain", "description"], "token_env": TOKEN_ENV, "page_size": 10,
              "requests_per_second": 500, "burst": 20, "search_requests_per_second": 500, "max_backoff_seconds": 0.2, "cursor_overlap_seconds": 0}
    return HubSpotSource(HubSpotSourceSettings(**{**values, **overrides}))


def add_companies(server, count: int, start: int = 0) -> list[str]:
    return [server.app.add("companies", name=f"Company {n}", domain=f"company{n}.example",
                           description=f"Makes widget model {n}.") for n in range(start, start + count)]


def searches(server) -> list[dict]:
    return [r.json() for r in server.requests if r.path.endswith("/search")]


def next_millisecond() -> None:
    """Changes in the same millisecond as a cursor are not after it (HubSpot stamps ms)."""
    time.sleep(0.003)


def test_full_listing_pages_through_hundreds_of_records(server):
    ids = add_companies(server, 350)
    server.app.archive("companies", ids[7])
    source = source_for(server)
    assert isinstance(source, IncrementalSource)

    refs = list(source.list_documents())

    assert [ref.id for ref in refs] == [f"companies/{i}" for i in ids if i != ids[7]]
    records = server.app.objects["companies"]
    assert all(ref.version == records[ref.id.split("/")[1]]["updatedAt"] for ref in refs)
    listings = [r for r in server.requests if r.method == "GET"]
    assert len(listings) == 35  # 349 records, 10 per page
    assert all(r.param("archived") == "false" and r.param("properties") == "name,domain,description"
               for r in listings)


def test_fetch_turns_a_record_into_text_with_the_default_or_a_configured_template(server):
    add_companies(server, 3)
    source = source_for(server)
    refs = list(source.list_documents())
    sent = len(server.requests)

    document = source.fetch(refs[1])
    assert len(server.requests) == sent  # the listed record is reused, not fetched again
    assert document.id == refs[1].id and document.version == refs[1].version
    assert document.title == "Company 1"
    assert document.text == "name: Company 1\ndomain: company1.example\ndescription: Makes widget model 1."
    assert document.location == f"{server.url}/crm/v3/objects/companies/{refs[1].id.split('/')[1]}"
    assert document.metadata == {"object_type": "companies", "hubspot_id": refs[1].id.split("/")[1]}

    # A fresh source (another worker process) has no listing: it GETs the record.
    templated = source_for(server, template="{name} ({domain})\n{description}", title_property="domain")
    document = templated.fetch(refs[2])
    assert document.text == "Company 2 (company2.example)\nMakes widget model 2."
    assert document.title == "company2.example"
    assert server.requests[-1].path == f"/crm/v3/objects/companies/{refs[2].id.split('/')[1]}"


def test_fetch_says_a_record_gone_since_listing_is_gone_and_one_without_text_empty(server):
    first, second = server.app.add("companies", name="Acme"), server.app.add("companies", description="")
    server.app.archive("companies", first)
    source = source_for(server)
    with pytest.raises(DocumentGone, match="record not found"):
        source.fetch(DocumentRef(f"companies/{first}", "v"))
    with pytest.raises(DocumentEmpty, match="no text") as empty:
        source.fetch(DocumentRef(f"companies/{second}", "v"))
    assert not isinstance(empty.value, DocumentGone)


def test_incremental_search_returns_changes_and_archived_records_since_the_cursor(server):
    ids = add_companies(server, 120)
    source = source_for(server)
    next_millisecond()
    cursor = source.current_cursor()
    assert len(list(source.list_documents())) == 120
    next_millisecond()
    for object_id in ids[10:15]:
        server.app.update("companies", object_id, description="Now sells gadgets.")
    added = add_companies(server, 3, start=500)
    for object_id in ids[40:42]:
        server.app.archive("companies", object_id)

    before = source.current_cursor()
    changes = source.changes_since(cursor)
    upserts = list(changes.upserts)

    assert sorted(ref.id for ref in upserts) == sorted(f"companies/{i}" for i in ids[10:15] + added)
    assert sorted(changes.deletions) == sorted(f"companies/{i}" for i in ids[40:42])
    assert before <= changes.cursor <= source.current_cursor()
    assert "Now sells gadgets." in source.fetch(next(r for r in upserts if r.id == f"companies/{ids[12]}")).text
    body = searches(server)[0]
    since, until = body["filterGroups"][0]["filters"]
    assert since == {"propertyName": "hs_lastmodifieddate", "operator": "GT",
                     "value": str(round(parse_time(cursor).timestamp() * 1000))}
    assert until == {"propertyName": "hs_lastmodifieddate", "operator": "LTE",
                     "value": str(round(parse_time(changes.cursor).timestamp() * 1000))}
    assert body["limit"] <= 200 and body["properties"] == ["name", "domain", "description"]

    # Nothing changed since the new cursor: nothing to do.
    nothing = source.changes_since(changes.cursor)
    assert list(nothing.upserts) == [] and nothing.deletions == []


def test_the_cursor_overlap_sees_recent_records_again(server):
    ids = add_companies(server, 4)
    source = source_for(server, cursor_overlap_seconds=60)
    next_millisecond()
    changes = source.changes_since(source.current_cursor())
    assert sorted(ref.id for ref in changes.upserts) == sorted(f"companies/{i}" for i in ids)


def test_a_record_edited_while_the_search_pages_skips_no_other(server):
    """The issue's reproduction: page size 2, records A-F changed an hour ago, A edited after page 1."""
    hour_ago = int(time.time() * 1000) - 3_600_000
    ids = {name: server.app.add("companies", at_ms=hour_ago + n, name=name) for n, name in enumerate("ABCDEF")}
    names = {f"companies/{object_id}": name for name, object_id in ids.items()}
    source = source_for(server, page_size=2)

    changes = source.changes_since(iso(hour_ago - 1))
    upserts = iter(changes.upserts)
    returned = [names[next(upserts).id] for _ in range(2)]
    next_millisecond()
    server.app.update("companies", ids["A"], description="Edited while the search pages.")
    returned += [names[ref.id] for ref in upserts]

    assert returned[:6] == list("ABCDEF") and set(returned[6:]) <= {"A"}
    assert all("after" not in body for body in searches(server))  # keyset, never an offset
    assert changes.cursor <= source.current_cursor()
    # The edit is not lost either: the next run (from the returned cursor) sees A's new version.
    again = [names[ref.id] for ref in source.changes_since(changes.cursor).upserts]
    assert "A" in again


def test_search_sends_one_sort_and_drains_a_pages_last_time_by_id(server):
    base = int(time.time() * 1000) - 60_000
    ids = [server.app.add("companies", at_ms=base + n // 3, name=f"Company {n}") for n in range(7)]
    source = source_for(server, page_size=2)

    upserts = [ref.id for ref in source.changes_since(iso(base - 1)).upserts]

    assert sorted(upserts) == sorted(f"companies/{i}" for i in ids) and len(upserts) == len(set(upserts))
    bodies = searches(server)
    assert all(len(body["sorts"]) == 1 and "after" not in body for body in bodies)
    first, second, third = bodies[:3]
    assert first["sorts"] == [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}]
    (only,) = first["filterGroups"]
    assert only["filters"][0] == {"propertyName": "hs_lastmodifieddate", "operator": "GT", "value": str(base - 1)}
    # The first page's last time (records 0-2 share it) is not a boundary: its records are read by id.
    assert second["sorts"] == [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
    assert second["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": str(base)}]}]
    assert third["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": str(base)},
        {"propertyName": "hs_object_id", "operator": "GT", "value": ids[1]}]}]
    assert all(len(body["filterGroups"]) == 1 and len(body["filterGroups"][0]["filters"]) <= 2 for body in bodies)


def test_search_goes_past_the_result_window_and_through_ties_larger_than_a_page(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with hubspot_server(TOKEN, search_window=30) as server:
        base = int(time.time() * 1000) - 60_000
        # 100 records in groups sharing one millisecond, one group larger than the window itself.
        ids = [server.app.add("companies", at_ms=base + (n // 5 if n < 60 else 12), name=f"Company {n}")
               for n in range(100)]
        source = source_for(server, page_size=7)

        upserts = [ref.id for ref in source.changes_since(iso(base - 1)).upserts]

        assert sorted(upserts) == sorted(f"companies/{i}" for i in ids) and len(upserts) == 100  # each once
        modified = [server.app.objects["companies"][u.split("/")[1]]["updatedAt"] for u in upserts]
        assert modified == sorted(modified)
        assert all("after" not in body for body in searches(server))


def test_results_out_of_order_stop_the_source_instead_of_skipping(server, monkeypatch):
    base = int(time.time() * 1000) - 60_000
    for n in range(4):
        server.app.add("companies", at_ms=base + n, name=f"Company {n}")
    source = source_for(server, page_size=3)
    # A search that ignored its sort would let the keyset skip records.
    sort = server.app._sorted
    monkeypatch.setattr(server.app, "_sorted", lambda *args: list(reversed(sort(*args))))
    with pytest.raises(SourceError, match="out of order .the records did not come in ascending hs_lastmodifieddate"):
        list(source.changes_since(iso(base - 1)).upserts)


@pytest.mark.parametrize("change, refusal", [
    ({"sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"},
                {"propertyName": "hs_object_id", "direction": "ASCENDING"}]}, "only one sorting rule"),
    ({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": "1"}]}] * 6},
     "at most 5 filterGroups"),
    ({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": "1"}] * 11}]},
     "at most 5 filterGroups"),
    ({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": "1"}] * 9}] * 3},
     "25 filters in all"),
    ({"limit": 201}, "limit must be between 1 and 200"),
    ({"after": "10000"}, "pages through at most 10000 results"),
])
def test_the_test_server_refuses_what_hubspot_refuses(server, change, refusal):
    """A double that accepts what HubSpot refuses hid a two-sort search: each documented limit is a 400."""
    import requests

    add_companies(server, 3)
    query = {"filterGroups": [], "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
             "properties": ["name"], "limit": 200}
    url = f"{server.url}/crm/v3/objects/companies/search"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(url, json=query, headers=headers, timeout=10).status_code == 200

    answer = requests.post(url, json={**query, **change}, headers=headers, timeout=10)

    assert answer.status_code == 400
    body = answer.json()
    assert body["status"] == "error" and body["category"] == "VALIDATION_ERROR" and body["correlationId"]
    assert refusal in body["message"]


def test_the_test_server_orders_ties_neither_by_id_nor_the_same_way_twice(server):
    import requests

    moment = int(time.time() * 1000) - 60_000
    ids = [server.app.add("companies", at_ms=moment, name=f"Company {n}") for n in range(20)]
    query = {"sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}], "limit": 100}
    orders = [[r["id"] for r in requests.post(f"{server.url}/crm/v3/objects/companies/search", json=query, timeout=10,
                                              headers={"Authorization": f"Bearer {TOKEN}"}).json()["results"]]
              for _ in range(3)]
    assert all(sorted(order) == sorted(ids) and order != ids for order in orders)
    assert len({tuple(order) for order in orders}) == 3


def test_450_records_of_one_time_and_edits_while_paging_are_each_read_once_and_none_lost(server):
    """The issue's acceptance: a bulk stamp of 450 records (more than two pages of ties) and records edited
    while the search pages; ties shuffled and two sorts refused by the server."""
    before = int(time.time() * 1000) - 120_000
    quiet = [server.app.add("companies", at_ms=before, name=f"Quiet {n}") for n in range(30)]
    bulk_time = before + 1_000
    bulk = [server.app.add("companies", at_ms=bulk_time, name=f"Bulk {n}") for n in range(450)]
    later = [server.app.add("companies", at_ms=bulk_time + 1 + n, name=f"Later {n}") for n in range(40)]
    source = source_for(server, page_size=200)
    cursor = iso(before)  # the last run's: the quiet records are behind it

    changes = source.changes_since(cursor)
    first_run = []
    for ref in changes.upserts:
        first_run.append(ref.id)
        if len(first_run) == 150:  # while the search pages: one bulk record read already, one not yet, one later
            next_millisecond()
            edited = [bulk[0] if f"companies/{bulk[0]}" in first_run else bulk[1], bulk[-1], later[-1]]
            for object_id in edited:
                server.app.update("companies", object_id, description="Edited while the search pages.")

    expected = {f"companies/{i}" for i in bulk + later}
    assert len(first_run) == len(set(first_run))  # no record twice in one run
    assert set(first_run) - expected == set()  # exactly the records changed after the cursor…
    assert expected - set(first_run) <= {f"companies/{i}" for i in edited}  # …but those edited moved past it
    bodies = searches(server)
    assert all(len(body["sorts"]) == 1 and body["limit"] <= 200 and "after" not in body for body in bodies)

    second_run = [ref.id for ref in source.changes_since(changes.cursor).upserts]
    assert sorted(second_run) == sorted(f"companies/{i}" for i in edited)  # every edit fetched, nothing else
    versions = {f"companies/{i}": r["updatedAt"] for i, r in server.app.objects["companies"].items()}
    assert all(versions[document] > iso(bulk_time) for document in second_run)
    assert not set(f"companies/{i}" for i in quiet) & set(first_run + second_run)


def test_searches_keep_to_their_own_rate_limit(server):
    add_companies(server, 60)
    source = source_for(server, page_size=5, requests_per_second=500, burst=20, search_requests_per_second=20)
    listed = len(list(source.changes_since(iso(0)).upserts))
    assert listed == 60
    times = sorted(r.arrived for r in server.requests if r.path.endswith("/search"))
    assert len(times) >= 12
    # At most 1 + 20 * T searches in any window of T seconds (a burst of one, then 20 a second).
    assert all(later - earlier >= (n - 1) / 20 - 0.02 for n in range(2, 8)
               for earlier, later in zip(times, times[n - 1:]))


def test_listing_completes_through_faults_within_the_rate_limit(server):
    add_companies(server, 300)
    # The faults hit consecutive attempts of the first page: one request sees them all.
    source = source_for(server, requests_per_second=25, burst=3, read_timeout=0.3, max_attempts=10,
                        max_backoff_seconds=1.5)
    server.fail_next(2, 429, retry_after="1")
    server.reset_next(2)
    server.slow_next(1, 0.8)
    server.fail_next(3, 503)

    assert len(list(source.list_documents())) == 300
    assert server.pending_faults == 0
    assert server.max_requests_in_window(1.0) <= 25 + 3
    reasons = source.http.stats.retry_reasons  # one retry per fault (a busy machine may add timeouts only)
    assert {"HTTP 429": 2, "connection": 2, "HTTP 503": 3}.items() <= reasons.items() and reasons["timeout"] >= 1
    assert set(reasons) == {"HTTP 429", "connection", "HTTP 503", "timeout"}
    assert source.http.stats.retries == sum(reasons.values())
    assert all(later.arrived - earlier.arrived >= 0.98 for earlier, later in
               zip(server.requests, server.requests[1:3]))  # Retry-After honoured


def test_a_rejected_token_fails_the_source_at_once(server, monkeypatch):
    add_companies(server, 3)
    monkeypatch.setenv(TOKEN_ENV, "pat-na1-revoked-token-000")
    source = source_for(server)
    with pytest.raises(SourceError, match="credentials rejected by source 'crm'.*HTTP 401") as raised:
        list(source.list_documents())
    assert len(server.requests) == 1
    assert "pat-na1-revoked-token-000" not in str(raised.value)


def test_the_token_is_absent_from_logs_errors_and_reprs(server, caplog):
    add_companies(server, 30)
    source = source_for(server, max_attempts=3)
    server.fail_next(1, 503)
    server.reset_next(1)
    with caplog.at_level(logging.DEBUG):
        refs = list(source.list_documents())
        documents = [source.fetch(ref) for ref in refs]
        server.fail_next(5, 502)
        with pytest.raises(SourceError) as raised:
            list(source.list_documents())
    assert "retrying GET" in caplog.text
    seen = caplog.text + str(raised.value) + repr(source.settings) + repr(documents) + repr(vars(source))
    assert TOKEN not in seen


def test_a_missing_token_names_the_variable_not_a_value(server, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(SourceError, match=f"HubSpot token of source 'crm': environment variable {TOKEN_ENV} is not set"):
        source_for(server)


@pytest.mark.parametrize("entry, problem", [
    ({"token_env": "A", "token_secret_block": "b"}, "exactly one of token_env"),
    ({"token_env": None}, "exactly one of token_env"),
    ({"template": "{name} {phone}"}, r"sources\[crm\]\.template: \{phone\} is not a property"),
    ({"template": "{name}: {amount:,.2f}", "properties": ["name", "amount"]},
     r"sources\[crm\]\.template: .*'\{amount:,\.2f\}'.*strings"),
    ({"template": "{name} {}"}, r"sources\[crm\]\.template: .*positional"),
    ({"template": "{name.upper} {domain[0]}"}, r"sources\[crm\]\.template: .*name\.upper"),
    ({"template": "{name:{domain}}"}, r"sources\[crm\]\.template: .*nested"),
    ({"template": "{name"}, r"sources\[crm\]\.template: .*not a valid template"),
    ({"title_property": "phone"}, "title_property 'phone' is not in properties"),
    ({"page_size": 500}, "page_size"),
])
def test_config_problems_are_reported_by_key(tmp_path, entry, problem):
    source = {"name": "crm", "type": "hubspot", "object_type": "companies", "properties": ["name", "domain"],
              "token_env": "HUBSPOT_TOKEN", **entry}
    source = {key: value for key, value in source.items() if value is not None}
    with pytest.raises(ConfigError, match=problem):
        parse_config({"sources": [source]}, tmp_path, environ={})


def test_templates_that_format_strings_are_accepted(tmp_path):
    config = parse_config({"sources": [{
        "name": "crm", "type": "hubspot", "object_type": "companies", "properties": ["name", "domain"],
        "token_env": "HUBSPOT_TOKEN", "template": "{name!r:>20} {{literal}} {domain:.40}",
    }]}, tmp_path, environ={})
    assert config.sources[0].template.startswith("{name!r")


def test_the_documented_config_contract_parses(tmp_path):
    config = parse_config({"sources": [{
        "name": "crm", "type": "hubspot", "base_url": "http://127.0.0.1:8081", "object_type": "companies",
        "properties": ["name", "domain", "description"], "token_env": "HUBSPOT_TOKEN",
        "requests_per_second": 5, "burst": 10,
    }]}, tmp_path, environ={})
    (crm,) = config.sources
    assert isinstance(crm, HubSpotSourceSettings) and crm.base_url == "http://127.0.0.1:8081"
    assert HubSpotSourceSettings(name="x", type="hubspot", object_type="deals", properties=["dealname"],
                                 token_secret_block="hubspot").base_url == "https://api.hubapi.com"
    with pytest.raises(ValidationError):
        HubSpotSourceSettings(name="x", type="hubspot", object_type="deals", properties=[], token_env="T")


def test_times_round_trip_between_iso_and_epoch_milliseconds():
    moment = datetime(2024, 5, 1, 12, 30, 0, 123000, tzinfo=timezone.utc)
    assert format_time(moment) == "2024-05-01T12:30:00.123Z"
    assert parse_time("2024-05-01T12:30:00.123Z") == moment == parse_time("1714566600123")


CHECK_SCRIPT = """
import sys
from vectormill.cli.main import main
sys.argv = ["vectormill", "sources", "check", *sys.argv[1:]]
try:
    main()
finally:
    print("prefect imported" if "prefect" in sys.modules else "prefect not imported", file=sys.stderr)
"""


def run_sources_check(config, *options):
    return subprocess.run([sys.executable, "-c", CHECK_SCRIPT, "--config", str(config), *options],
                          capture_output=True, text=True, timeout=60)


def test_sources_check_reports_each_source_without_secrets_or_prefect(server, tmp_path, monkeypatch):
    add_companies(server, 3)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n")
    monkeypatch.setenv("HUBSPOT_BAD_TOKEN", "pat-na1-bad-token-31337")
    config = tmp_path / "vectormill.toml"
    config.write_text(
        '[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "docs"\n\n'
        f'[[sources]]\nname = "crm"\ntype = "hubspot"\nbase_url = "{server.url}"\nobject_type = "companies"\n'
        f'properties = ["name"]\ntoken_env = "{TOKEN_ENV}"\n\n'
        f'[[sources]]\nname = "crm-bad"\ntype = "hubspot"\nbase_url = "{server.url}"\nobject_type = "companies"\n'
        'properties = ["name"]\ntoken_env = "HUBSPOT_BAD_TOKEN"\n')

    result = run_sources_check(config, "--json")

    assert result.returncode == 1, result.stderr
    checks = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert checks["docs"]["ok"] is True and "a.md" in checks["docs"]["detail"]
    assert checks["crm"]["ok"] is True and "companies/" in checks["crm"]["detail"]
    assert checks["crm-bad"]["ok"] is False and "credentials rejected" in checks["crm-bad"]["detail"]
    assert "prefect not imported" in result.stderr
    table = run_sources_check(config)
    assert table.returncode == 1 and "crm-bad" in table.stdout and "failed" in table.stdout
    for output in (result.stdout + result.stderr, table.stdout + table.stderr):
        assert TOKEN not in output and "pat-na1-bad-token-31337" not in output

    config.write_text(config.read_text().split("[[sources]]\nname = \"crm-bad\"")[0])
    assert run_sources_check(config, "--json").returncode == 0


@pytest.mark.slow
def test_the_ingest_flow_syncs_a_crm_incrementally_and_a_rejected_token_fails_only_its_source(
        server, tmp_path, monkeypatch, prefect_harness, capfd, caplog):
    from vectormill.flows.config import load_config
    from vectormill.flows.ingest import IngestFailed, ingest
    from vectormill.stores.faiss_store import FaissStore

    ids = add_companies(server, 40)
    monkeypatch.setenv("HUBSPOT_BAD_TOKEN", "pat-na1-bad-token-31337")
    config = tmp_path / "vectormill.toml"
    source = (f'base_url = "{server.url}"\nobject_type = "companies"\nproperties = ["name", "domain", "description"]\n'
              'page_size = 7\nfetch_batch_size = 8\n')
    config.write_text(
        '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n[embedding]\ntask_chunks = 16\n\n'
        f'[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "{TOKEN_ENV}"\n{source}\n'
        f'[[sources]]\nname = "crm-bad"\ntype = "hubspot"\ntoken_env = "HUBSPOT_BAD_TOKEN"\n{source}')

    with pytest.raises(IngestFailed, match="source 'crm-bad' failed: credentials rejected") as failed:
        ingest(config_file=str(config))
    first = {report["name"]: report for report in failed.value.summary["sources"]}
    assert first["crm"]["status"] == "completed" and first["crm"]["documents"]["new"] == 40
    assert first["crm-bad"]["status"] == "failed"
    assert sum(r.headers.get("Authorization") != f"Bearer {TOKEN}" for r in server.requests) == 1  # no retry loop
    assert not any(r.method == "GET" and r.path.count("/") == 5 for r in server.requests)  # fetch reused listings

    next_millisecond()
    for object_id in ids[:3]:
        server.app.update("companies", object_id, description="Pivoted to quantum widgets.")
    for object_id in ids[20:22]:
        server.app.archive("companies", object_id)
    (added,) = add_companies(server, 1, start=900)
    sent = len(server.requests)

    second = ingest(config_file=str(config), sources=["crm"])

    documents = second["documents"]
    assert (documents["new"], documents["changed"], documents["deleted"], documents["failed"]) == (1, 3, 2, 0)
    assert second["chunks_embedded"] == 4  # one short chunk per changed or new record, nothing else
    run = server.requests[sent:]
    assert any(r.path.endswith("/search") for r in run)
    assert not any(r.method == "GET" and r.param("archived") == "false" for r in run)  # no full listing
    with FaissStore.open(load_config(config).store, writable=False) as store:
        stored = store.document_versions("crm")
    records = server.app.objects["companies"]
    assert stored == {f"companies/{i}": r["updatedAt"] for i, r in records.items() if not r["archived"]}
    assert f"companies/{added}" in stored and f"companies/{ids[20]}" not in stored

    # A long-lived process keeps one source object per configured source, holding no record after its run.
    from vectormill.flows import pipeline
    assert all(not source._listed for name, (_, source) in pipeline._sources.items() if name.startswith("crm"))

    captured = capfd.readouterr()
    everything = captured.out + captured.err + caplog.text + json.dumps(second) + json.dumps(failed.value.summary)
    assert TOKEN not in everything and "pat-na1-bad-token-31337" not in everything


def test_fetches_that_keep_failing_fail_their_documents_until_the_circuit_stops_the_source(server):
    ids = add_companies(server, 5)
    source = source_for(server, max_attempts=2, circuit_breaker_failures=3)
    refs = [DocumentRef(f"companies/{i}", "v") for i in ids]  # not listed in this process: fetch GETs them
    server.fail_next(100, 503)
    for ref in refs[:3]:
        with pytest.raises(DocumentError, match="failed after 2 attempt"):
            source.fetch(ref)
    sent = len(server.requests)
    with pytest.raises(SourceError, match="stopped for this run: 3 requests in a row failed"):
        source.fetch(refs[3])
    assert len(server.requests) == sent
    # The next run starts with a closed circuit.
    server.clear_faults()
    assert len(list(source.list_documents())) == 5


@pytest.mark.parametrize("damage, reason", [
    (lambda record: record.pop("updatedAt"), "lacks updatedAt"),
    (lambda record: record.update(properties=["not", "an", "object"]), "properties are not an object"),
    (lambda record: record.update(updatedAt="yesterday"), "updatedAt 'yesterday' is not a time"),
])
def test_a_malformed_record_fails_that_record_with_a_one_line_reason(server, damage, reason):
    good, bad = add_companies(server, 2)
    damage(server.app.objects["companies"][bad])
    source = source_for(server, template="{name}: {description}")
    assert "Company 0" in source.fetch(DocumentRef(f"companies/{good}", "v")).text
    with pytest.raises(DocumentError, match=reason) as failed:
        source.fetch(DocumentRef(f"companies/{bad}", "v"))
    assert "\n" not in str(failed.value) and not isinstance(failed.value, DocumentGone)


def test_a_malformed_record_in_a_listing_stops_the_source_instead_of_looking_deleted(server):
    ids = add_companies(server, 3)
    del server.app.objects["companies"][ids[1]]["updatedAt"]
    with pytest.raises(SourceError, match=f"record {ids[1]} lacks updatedAt"):
        list(source_for(server).list_documents())


def test_property_values_that_are_not_strings_are_formatted_as_text(server):
    (object_id,) = add_companies(server, 1)
    server.app.objects["companies"][object_id]["properties"]["description"] = 12
    document = source_for(server, template="{name} ({description:.5})").fetch(DocumentRef(f"companies/{object_id}", "v"))
    assert document.text == "Company 0 (12)"

def test_a_run_holds_its_listed_records_only_until_it_ends(server):
    """Listed records wait for their fetch (no second request); those never fetched (unchanged) are freed."""
    add_companies(server, 12)
    source = source_for(server)
    refs = list(source.list_documents())
    sent = len(server.requests)
    source.fetch(refs[0])
    assert len(server.requests) == sent  # from the listing
    source.finish_run()
    source.fetch(refs[1])
    assert len(server.requests) == sent + 1  # forgotten: fetched again
    assert not source._listed


def test_one_source_object_per_configured_source_and_an_edit_replaces_it(server):
    from vectormill.flows.pipeline import _sources, source_for as shared_source

    settings = source_for(server).settings
    first = shared_source(settings)
    assert shared_source(settings.model_copy()) is first
    edited = shared_source(settings.model_copy(update={"page_size": 5}))
    assert edited is not first and shared_source(edited.settings) is edited
    assert [entry[1] for name, entry in _sources.items() if name == settings.name] == [edited]
