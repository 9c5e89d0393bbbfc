"""The shared HTTP layer against a real HubSpot-shaped server on 127.0.0.1 with injected faults."""

import email.utils
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from vectormill.connectors.errors import SourceError
from vectormill.connectors.http import (
    CircuitOpenError,
    HttpClient,
    HttpStatusError,
    HttpUnavailableError,
    parse_retry_after,
)
from vectormill.connectors.settings import HttpSourceSettings

from .servers.hubspot_server import hubspot_server

TOKEN = "pat-na1-5e3c1d2a-7f00-4b9e-a1c2-000000000042"


def settings(**overrides) -> HttpSourceSettings:
    # A fresh name per client: rate-limit buckets are shared per source name in the process.
    values = {"name": f"test-{uuid.uuid4().hex[:8]}", "requests_per_second": 200, "burst": 10, "read_timeout": 2.0,
              "max_backoff_seconds": 0.2, "max_attempts": 4}
    return HttpSourceSettings(**{**values, **overrides})


@pytest.fixture
def server():
    with hubspot_server(TOKEN) as running:
        for number in range(5):
            running.app.add("companies", name=f"Company {number}")
        yield running


def client_for(server, token=TOKEN, **overrides) -> HttpClient:
    config = settings(**overrides)
    return HttpClient(config.name, config, headers={"Authorization": f"Bearer {token}"}, secret_values=(token,))


def companies(server) -> str:
    return f"{server.url}/crm/v3/objects/companies"


def gaps(server) -> list[float]:
    times = [request.arrived for request in server.requests]
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_every_request_completes_through_429s_503s_resets_and_slow_replies_within_the_rate(server):
    client = client_for(server, requests_per_second=40, burst=4, read_timeout=0.4, max_attempts=10,
                        max_backoff_seconds=1.5)
    server.fail_next(3, 429, retry_after="1")
    server.fail_next(4, 503)
    server.reset_next(3)
    server.slow_next(2, 1.0)
    answers, errors = [], []

    def worker():
        for _ in range(30):
            try:
                answers.append(client.get(companies(server), params={"limit": 2}).json())
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(answers) == 120 and all(len(answer["results"]) == 2 for answer in answers)
    assert server.pending_faults == 0
    # Every injected fault cost exactly one retry. A very busy machine can make a plain reply miss the
    # 0.4 s read timeout too: such a timeout is one more retry, and nothing else may differ.
    reasons = client.stats.retry_reasons
    extra_timeouts = reasons["timeout"] - 2
    assert extra_timeouts >= 0 and {"HTTP 429": 3, "HTTP 503": 4, "connection": 3}.items() <= reasons.items()
    assert set(reasons) == {"HTTP 429", "HTTP 503", "connection", "timeout"}
    assert client.stats.retries == 12 + extra_timeouts and len(server.requests) == 120 + 12 + extra_timeouts
    # Measured at the server: never more than rate + burst requests in any second.
    assert server.max_requests_in_window(1.0) <= 40 + 4
    assert client.stats.rate_limit_wait_seconds > 0


def test_retry_after_in_seconds_is_waited_before_retrying(server):
    client = client_for(server, max_backoff_seconds=5)
    server.fail_next(2, 429, retry_after="1")
    assert client.get(companies(server)).status_code == 200
    assert len(server.requests) == 3
    assert all(gap >= 0.98 for gap in gaps(server)), gaps(server)
    assert client.stats.backoff_seconds >= 2.0


def test_retry_after_as_an_http_date_is_waited_before_retrying(server):
    client = client_for(server, max_backoff_seconds=5)
    when = datetime.now(timezone.utc) + timedelta(seconds=2)
    server.fail_next(1, 503, retry_after=email.utils.format_datetime(when, usegmt=True))
    assert client.get(companies(server)).status_code == 200
    # The date has whole seconds: the wait is between 1 and 2 s.
    assert 0.95 <= gaps(server)[0] <= 2.5


def test_a_retry_after_beyond_the_cap_waits_only_the_cap(server):
    client = client_for(server, max_backoff_seconds=0.2)
    server.fail_next(1, 429, retry_after="120")
    assert client.get(companies(server)).status_code == 200
    assert 0.15 <= gaps(server)[0] < 1.0


def test_parse_retry_after():
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0  # in the past: go now
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_stop_the_source_at_once_without_retrying(server, status):
    if status == 401:
        client = client_for(server, token="pat-na1-wrong-token-value")
    else:
        client = client_for(server)
        server.fail_next(1, 403)
    with pytest.raises(SourceError) as raised:
        client.get(companies(server))
    assert len(server.requests) == 1
    message = str(raised.value)
    assert f"HTTP {status}" in message and "credentials rejected" in message and "token" in message
    assert "pat-na1-wrong-token-value" not in message and TOKEN not in message


def test_other_4xx_fail_the_request_at_once_with_the_url_and_the_answer(server):
    client = client_for(server)
    with pytest.raises(HttpStatusError) as raised:
        client.get(f"{companies(server)}/999999", params={"properties": "name"})
    assert raised.value.status == 404
    assert len(server.requests) == 1
    assert "/crm/v3/objects/companies/999999?properties=name" in str(raised.value)
    assert "OBJECT_NOT_FOUND" in str(raised.value)


def test_a_request_that_keeps_failing_gives_up_after_max_attempts(server):
    client = client_for(server, max_attempts=3)
    server.fail_next(10, 503)
    with pytest.raises(HttpUnavailableError, match=r"failed after 3 attempt\(s\).*HTTP 503"):
        client.get(companies(server))
    assert len(server.requests) == 3


def test_a_request_that_keeps_failing_gives_up_after_max_retry_seconds(server):
    client = client_for(server, max_attempts=100, max_retry_seconds=0.6, max_backoff_seconds=0.2)
    server.fail_next(100, 502)
    with pytest.raises(HttpUnavailableError, match=r"max_retry_seconds = 0\.6"):
        client.get(companies(server))
    # The time limit stopped it, not the attempts: no sleep was planned past 0.6 s (the client's
    # own account, so a busy machine that makes each request slow cannot change it).
    assert 2 <= len(server.requests) < 100
    assert 0 < client.stats.backoff_seconds <= 0.6


def test_connection_refused_is_retried_then_reported(server):
    client = client_for(server, max_attempts=2)
    with pytest.raises(HttpUnavailableError, match="ConnectionRefusedError"):
        client.get("http://127.0.0.1:9/crm/v3/objects/companies")
    assert client.stats.requests == 2


def test_the_circuit_opens_after_consecutive_failed_requests_and_sends_nothing_more(server):
    client = client_for(server, max_attempts=2, circuit_breaker_failures=2)
    server.fail_next(2, 503)
    with pytest.raises(HttpUnavailableError):
        client.get(companies(server))
    assert client.get(companies(server)).status_code == 200  # a success closes the count again
    server.fail_next(4, 503)
    for _ in range(2):
        with pytest.raises(HttpUnavailableError):
            client.get(companies(server))
    sent = len(server.requests)
    with pytest.raises(CircuitOpenError, match="stopped for this run: 2 requests in a row failed"):
        client.get(companies(server))
    assert len(server.requests) == sent
    assert isinstance(CircuitOpenError("x"), SourceError)


def test_a_source_can_declare_a_200_retryable_from_its_body(server):
    client = client_for(server)
    answers = iter([0.3, None])
    response = client.get(companies(server), retry_after_body=lambda response: next(answers))
    assert response.status_code == 200
    assert len(server.requests) == 2 and gaps(server)[0] >= 0.19  # the wait is capped at max_backoff_seconds
    assert client.stats.retry_reasons == {"asked to wait": 1}


def test_secrets_never_reach_logs_or_errors(server, caplog):
    secret = "s3cr3t-value-9f8e7d"
    config = settings(max_attempts=2)
    client = HttpClient(config.name, config, headers={"Authorization": f"Bearer {TOKEN}"},
                        secret_values=(TOKEN, secret))
    server.fail_next(10, 503)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(HttpUnavailableError) as raised:
            client.get(f"{companies(server)}/{secret}", params={"apikey": "query-key-123", "q": "x"})
    text = caplog.text + str(raised.value)
    assert "retrying GET" in caplog.text  # the retry was logged…
    for hidden in (TOKEN, secret, "query-key-123"):
        assert hidden not in text  # …without any secret
    assert "apikey=***" in str(raised.value)


def test_requests_carry_a_descriptive_user_agent(server):
    client_for(server).get(companies(server))
    assert server.requests[0].headers["User-Agent"].startswith("vectormill/")


@pytest.mark.slow
def test_a_named_prefect_rate_limit_is_shared_on_top_of_the_local_limiter(server, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"hubspot-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as prefect_client:
        prefect_client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, slot_decay_per_second=5))
    client = client_for(server, prefect_rate_limit=name)  # the local limiter allows 200/s
    for _ in range(8):
        client.get(companies(server))
    # 5 per second across every run that names the limit.
    assert sum(gaps(server)) >= 7 / 5 * 0.8
    assert client.stats.rate_limit_wait_seconds >= 7 / 5 * 0.8
