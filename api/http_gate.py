"""The search service's edge: what a request must pass, in this order, before the search sees a byte of its body.

1. `HeaderDeadline` (uvicorn's h11 protocol): a request's headers arrive within a deadline of the connection or of
   the previous answer, else the connection is closed: a client trickling headers holds a socket that long, no more.
2. `Authentication`: the key, from the headers alone (401 at once, the body unread); the key's name and scope go
   into the ASGI scope for the search.
3. `Admission`: a bounded queue of searches (429 at once when full).
4. `BodyReader`: the body, read whole within `max_body_bytes` (413, for a chunked body too) and a time limit (408).
Each refusal answers `Connection: close`: uvicorn then closes the socket instead of reading the rest of the body.
Pure ASGI layers, so that nothing below them (FastAPI's parsing) runs before them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from vectormill.flows.search_keys import ServiceKey

KEY_SCOPE = "vectormill.key"  # the ASGI scope entry that names the request's ServiceKey


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An answer given before the body is read: the connection closes after it (its unread body is not read)."""
    return problem(status, detail, (headers or {}) | {"Connection": "close"})


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete `seconds` after the
    connection was made or the previous answer was sent (uvicorn has no such limit: its keep-alive timer stops at
    the first byte, so headers sent a byte at a time held a socket for ever)."""

    class HeaderDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # a request's headers are in: no deadline for them now
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expire(self) -> None:
            self.deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class KeyRing:
    """The service's keys, looked up in constant time: every key is compared (digests of equal length, with
    hmac.compare_digest), whichever matches, so the time an answer takes tells nothing about any secret."""

    def __init__(self, keys: list[ServiceKey]):
        self.keys = [(hashlib.sha256(key.secret).digest(), key) for key in keys]

    def find(self, token: bytes | None) -> ServiceKey | None:
        if not token:
            return None
        given = hashlib.sha256(token).digest()
        found = None
        for digest, key in self.keys:
            if hmac.compare_digest(given, digest):
                found = key
        return found


class Authentication:
    """The key of a request to a guarded path, from its headers, before anything reads its body: `paths` maps each
    guarded path to whether a scoped key may call it (else only the all-sources key)."""

    def __init__(self, app, keys: KeyRing, paths: dict[str, bool]):
        self.app, self.keys, self.paths = app, keys, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        key = self.keys.find(bearer_token(scope["headers"]))
        if key is None:
            await refusal(401, "missing or wrong API key: send Authorization: Bearer <key>",
                          {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if key.scope is not None and not self.paths[scope["path"]]:
            await refusal(403, f"{scope['path']} needs the all-sources key (VECTORMILL_SEARCH_API_KEY), not key "
                               f"{key.name!r}")(scope, receive, send)
            return
        scope[KEY_SCOPE] = key
        await self.app(scope, receive, send)


@dataclass
class Occupancy:
    admitted: int = 0  # searches inside the service, from their admission to their answer


class Admission:
    """A bounded queue of searches (pure ASGI middleware): at most `capacity` requests to /search inside the service
    at once, from their admission (after their key, before their body is read) to their answer; the next is answered
    429 at once. Beyond the searches running, the rest wait for the search pool: a bounded wait, never an unbounded
    one."""

    def __init__(self, app, capacity: int, retry_after: int, occupancy: Occupancy | None = None):
        self.app, self.capacity, self.retry_after = app, capacity, retry_after
        self.occupancy = occupancy or Occupancy()

    @property
    def admitted(self) -> int:
        return self.occupancy.admitted

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/search":
            await self.app(scope, receive, send)
            return
        if self.occupancy.admitted >= self.capacity:
            response = refusal(429, "too many searches at once: retry later", {"Retry-After": str(self.retry_after)})
            await response(scope, receive, send)
            return
        self.occupancy.admitted += 1  # one event loop: no other request is admitted between the check and this
        try:
            await self.app(scope, receive, send)
        finally:
            self.occupancy.admitted -= 1


class BodyReader:
    """A request's whole body, read before the app runs: at most `limit` bytes (413 past it, at once for a
    Content-Length over it, else as soon as the chunks received pass it) within `timeout` seconds (408). The app
    then receives it as one message."""

    def __init__(self, app, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await refusal(413, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout)
        except TimeoutError:
            await refusal(408, f"request body not received within {self.timeout:g} s")(scope, receive, send)
            return
        except ClientGone:  # nobody to answer
            return
        if body is None:
            await refusal(413, f"request body over {self.limit} bytes")(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes | None:
        """The body; None past the limit (the rest is not read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class ClientGone(Exception):
    """The client closed the connection before its body was in."""


def _replay(body: bytes, receive):
    given = False

    async def replayed() -> dict[str, Any]:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
