"""The one HTTP layer of every HTTP source (and of the external embedding service).

`HttpClient` wraps a `requests.Session` with (connect, read) timeouts, a descriptive
User-Agent and TLS verification, and sends every request through:

- the source's token bucket (requests per second + burst, shared by all threads of the
  source in this process) and, when configured, a named Prefect rate limit shared by runs;
- a tenacity retry policy: connection errors, timeouts, resets, 429 and 500/502/503/504 are
  retried, waiting the larger of `Retry-After` and exponential backoff with full jitter, capped;
  it stops after `max_attempts` or `max_retry_seconds`;
- a circuit breaker: after `circuit_breaker_failures` requests in a row failed for good, the
  client refuses further requests for this run (`CircuitOpenError`); sources call
  `reset_circuit()` when a run starts listing.

A request that still fails after its retries raises `HttpUnavailableError` (a `SourceError`:
a listing that cannot go on stops the source); a source's `fetch` turns it into a
`DocumentError`, so one unlucky document fails alone until the circuit opens.

401/403 stop the source at once (`SourceError`); other 4xx raise `HttpStatusError` for the
caller to turn into a failed document or a failed listing. Secret values given to the client
are replaced by `***` in every log line and error text.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_random_exponential

from .errors import SourceError
from .ratelimit import TokenBucket, shared_bucket
from .settings import HttpSourceSettings

logger = logging.getLogger("vectormill.http")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CREDENTIAL_STATUS = frozenset({401, 403})
# Query parameters whose values never go into a message or a log line.
SECRET_WORDS = r"token|key|secret|pass|auth|signature|sig|credential"
SECRET_PARAMETER = re.compile(SECRET_WORDS, re.IGNORECASE)
SECRET_QUERY_VALUE = re.compile(rf"([?&][^=&\s]*(?:{SECRET_WORDS})[^=&\s]*=)[^&\s\"]*", re.IGNORECASE)
BODY_EXCERPT_CHARS = 200


class _RedactSecrets(logging.Filter):
    """Masks secrets in urllib3's debug lines, which print request URLs with their query."""

    def __init__(self):
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = SECRET_QUERY_VALUE.sub(r"\1***", message)
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


_urllib3_redaction = _RedactSecrets()
logging.getLogger("urllib3.connectionpool").addFilter(_urllib3_redaction)


def user_agent() -> str:
    try:
        return f"vectormill/{version('vectormill')}"
    except PackageNotFoundError:
        return "vectormill/dev"


class HttpStatusError(Exception):
    """A 4xx answer that retrying cannot fix (404, 400…): the caller fails a document or a listing."""

    def __init__(self, message: str, status: int, url: str):
        super().__init__(message)
        self.status = status
        self.url = url


class CircuitOpenError(SourceError):
    """The source failed too many requests in a row: it is stopped for this run."""


class HttpUnavailableError(SourceError):
    """One request still failed after every retry (the service is down, overloaded or unreachable)."""


class _Retryable(Exception):
    """An attempt that may succeed if repeated; `retry_after` is what the server asked for."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.kind = kind  # short, for counting: "HTTP 429", "timeout", "connection"…
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class HttpStats:
    requests: int = 0  # attempts sent, retries included
    retries: int = 0
    retry_reasons: Counter = field(default_factory=Counter)
    rate_limit_wait_seconds: float = 0.0  # waited for the token bucket (and the Prefect limit)
    backoff_seconds: float = 0.0  # slept between attempts

    def since(self, earlier: "HttpStats") -> dict[str, Any]:
        """What happened after `earlier` (a copy taken then), as plain data for a run summary."""
        return {
            "requests": self.requests - earlier.requests,
            "retries": self.retries - earlier.retries,
            "retry_reasons": dict(self.retry_reasons - earlier.retry_reasons),
            "rate_limit_wait_seconds": round(self.rate_limit_wait_seconds - earlier.rate_limit_wait_seconds, 3),
            "backoff_seconds": round(self.backoff_seconds - earlier.backoff_seconds, 3),
        }


def _root_cause(exc: BaseException) -> str:
    """The innermost error's class name ("ConnectionRefusedError", "IncompleteRead"…); its text may hold URLs."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or getattr(exc, "reason", None) or (exc.args[0] if exc.args else None) or exc.__context__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return type(exc).__name__


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class HttpClient:
    def __init__(
        self,
        source_name: str,
        settings: HttpSourceSettings,
        *,
        headers: dict[str, str] | None = None,
        secret_values: tuple[str, ...] = (),
    ):
        self.source_name = source_name
        self.settings = settings
        self.stats = HttpStats()
        self._secrets = tuple(value for value in secret_values if value)
        _urllib3_redaction.secrets.update(self._secrets)
        self._bucket = shared_bucket(source_name, settings.requests_per_second, settings.burst)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"{user_agent()} (source {source_name})"
        self._session.headers.update(headers or {})
        self._session.verify = settings.verify_tls
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._last_failure = ""
        self._jitter = wait_random_exponential(multiplier=0.5, max=settings.max_backoff_seconds)

    # ---- public --------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        retry_after_body: Callable[[requests.Response], float | None] | None = None,
        limit: TokenBucket | None = None,
    ) -> requests.Response:
        """Send one request with rate limiting and retries; returns a 2xx/3xx response.

        `retry_after_body` lets a source declare a 200 a retryable error (MediaWiki's maxlag):
        it returns the seconds to wait, or None for a good response. `limit` is an endpoint's own
        rate limit (HubSpot's search), taken on top of the source's.
        """
        shown = self.display_url(url, params)
        self._check_circuit()
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.settings.max_attempts) | stop_before_delay(self.settings.max_retry_seconds),
            wait=self._wait,
            before_sleep=lambda state: self._log_retry(method, shown, state),
            reraise=True,
        )
        started = time.monotonic()
        try:
            response = retrying(self._attempt, method, url, shown, params, json, data, headers, retry_after_body,
                                limit)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", "?")
            reason = self.redact(exc.reason)
            self._record_failure(reason)
            raise HttpUnavailableError(
                f"source {self.source_name!r}: {method} {shown} failed after {attempts} attempt(s) in "
                f"{time.monotonic() - started:.1f}s: {reason} (limits: max_attempts = {self.settings.max_attempts}, "
                f"max_retry_seconds = {self.settings.max_retry_seconds:g})"
            ) from None
        except HttpStatusError:
            self._record_success()  # the service answered: it is up, the request was wrong
            raise
        self._record_success()
        return response

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def reset_circuit(self) -> None:
        """Start a new run: a circuit opened in an earlier run of this process closes again."""
        self._record_success()

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def display_url(self, url: str, params: Any = None) -> str:
        """The URL with its query, secret-looking parameter values and secret values masked."""
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, params)
        parts = urlsplit(prepared.url or url)
        query = urlencode(
            [(key, "***" if SECRET_PARAMETER.search(key) else value)
             for key, value in parse_qsl(parts.query, keep_blank_values=True)],
            safe="|:,/*",
        )
        netloc = parts.netloc.rsplit("@", 1)[-1]  # drop user:password@
        return self.redact(urlunsplit((parts.scheme, netloc, parts.path, query, "")))

    # ---- one attempt ---------------------------------------------------------------------
    def _attempt(self, method, url, shown, params, json, data, headers, retry_after_body,
                 limit) -> requests.Response:
        self._wait_for_slot(limit)
        with self._lock:
            self.stats.requests += 1
        try:
            response = self._session.request(
                method, url, params=params, json=json, data=data, headers=headers,
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
            )
        except requests.Timeout as exc:
            raise _Retryable("timeout", f"timed out ({type(exc).__name__})") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            raise _Retryable("connection", f"connection failed ({_root_cause(exc)})") from None
        status = response.status_code
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            hint = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
            raise _Retryable(f"HTTP {status}", f"HTTP {status}{hint}", retry_after)
        if status in CREDENTIAL_STATUS:
            raise SourceError(
                f"credentials rejected by source {self.source_name!r}: HTTP {status} from {method} {shown}: "
                f"{self._excerpt(response)}; check the token / password settings of this source "
                "(token_env, token_secret_block, bot_password_env…) and the account's permissions"
            )
        if status >= 400:
            raise HttpStatusError(
                f"source {self.source_name!r}: HTTP {status} from {method} {shown}: {self._excerpt(response)}",
                status, shown,
            )
        if retry_after_body is not None:
            wait = retry_after_body(response)
            if wait is not None:
                raise _Retryable("asked to wait", f"server asked to wait {wait:g}s", wait)
        return response

    def _wait_for_slot(self, limit: TokenBucket | None) -> None:
        waited = self._bucket.acquire() + (limit.acquire() if limit is not None else 0.0)
        if self.settings.prefect_rate_limit:
            # Shared by every run that names this limit; without a Prefect server it warns and goes on.
            from prefect.concurrency.sync import rate_limit

            before = time.monotonic()
            rate_limit(self.settings.prefect_rate_limit)
            waited += time.monotonic() - before
        with self._lock:
            self.stats.rate_limit_wait_seconds += waited

    def _excerpt(self, response: requests.Response) -> str:
        text = " ".join((response.text or "").split())
        if len(text) > BODY_EXCERPT_CHARS:
            text = text[:BODY_EXCERPT_CHARS] + "…"
        return self.redact(text) or "(empty body)"

    # ---- retry policy --------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        """Larger of the server's Retry-After and full-jitter exponential backoff, capped."""
        exc = state.outcome.exception() if state.outcome else None
        asked = exc.retry_after if isinstance(exc, _Retryable) and exc.retry_after is not None else 0.0
        return min(self.settings.max_backoff_seconds, max(asked, self._jitter(state)))

    def _log_retry(self, method: str, shown: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = self.redact(exc.reason if isinstance(exc, _Retryable) else repr(exc))
        wait = state.upcoming_sleep
        with self._lock:
            self.stats.retries += 1
            self.stats.retry_reasons[exc.kind if isinstance(exc, _Retryable) else type(exc).__name__] += 1
            self.stats.backoff_seconds += wait
        logger.warning(
            "source %s: retrying %s %s in %.2fs (attempt %d of %d failed): %s",
            self.source_name, method, shown, wait, state.attempt_number, self.settings.max_attempts, reason,
        )

    # ---- circuit breaker -----------------------------------------------------------------
    def _check_circuit(self) -> None:
        with self._lock:
            failures, last = self._consecutive_failures, self._last_failure
        if failures >= self.settings.circuit_breaker_failures:
            raise CircuitOpenError(
                f"source {self.source_name!r} stopped for this run: {failures} requests in a row failed after "
                f"retries (last: {last}); check that the service is reachable, then run again"
            )

    def _record_failure(self, reason: str) -> None:
        with self._lock:
            self._consecutive_failures += 1
            self._last_failure = reason

    def _record_success(self) -> None:
        with self._lock:
            self._consecutive_failures = 0
