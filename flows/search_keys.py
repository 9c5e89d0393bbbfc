"""The search service's keys: the all-sources key ($VECTORMILL_SEARCH_API_KEY, else [search_service] api_key_block)
and the named ones of [search_service.keys.NAME], each limited to its filter. Secrets are resolved here, at start;
errors name where a secret was looked for, never its value."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vectormill.connectors.errors import SourceError
from vectormill.connectors.secrets import resolve_secret
from vectormill.stores.filters import SearchFilter, parse_filter

from .settings import SearchServiceSettings

API_KEY_ENV = "VECTORMILL_SEARCH_API_KEY"
ALL_SOURCES = "all-sources"  # the all-sources key's name in the metrics (a named key may not take it)


@dataclass(frozen=True)
class ServiceKey:
    name: str  # shown in metrics; the secret never is
    secret: bytes = field(repr=False)
    scope: SearchFilter | None  # None: every source


def search_api_key(settings: SearchServiceSettings) -> str | None:
    """The all-sources key: $VECTORMILL_SEARCH_API_KEY, else the configured Prefect Secret block (only then is
    Prefect imported); None when neither is set and named keys are (an error when none is)."""
    if os.environ.get(API_KEY_ENV) or not settings.api_key_block:
        if not os.environ.get(API_KEY_ENV) and settings.keys:
            return None
        return resolve_secret(env=API_KEY_ENV, block=None, what="search service API key (or name a Prefect Secret "
                              "block in [search_service] api_key_block, or add [search_service.keys.NAME] tables)")
    return resolve_secret(env=None, block=settings.api_key_block, what="search service API key")


def service_keys(settings: SearchServiceSettings) -> list[ServiceKey]:
    """Every key the service takes, checked: no blank secret, none with white space around it (an HTTP header
    cannot carry it: no one could call with it), no secret shared by two keys (whose scope would it get?)."""
    keys = []
    all_sources = search_api_key(settings)
    if all_sources is not None:
        keys.append(ServiceKey(ALL_SOURCES, _checked(all_sources, "all-sources key"), None))
    for name, key in settings.keys.items():
        if name == ALL_SOURCES:
            raise SourceError(f"[search_service.keys.{name}]: the name {ALL_SOURCES!r} is the all-sources key's; "
                              "choose another")
        where = f"${key.secret_env}" if key.secret_env else f"Prefect Secret block {key.secret_block!r}"
        secret = resolve_secret(env=key.secret_env, block=key.secret_block, what=f"search service key {name!r}")
        keys.append(ServiceKey(name, _checked(secret, f"key {name!r} ({where})"), parse_filter(key.filter)))
    seen: dict[bytes, str] = {}
    for key in keys:
        if key.secret in seen:
            raise SourceError(f"search service keys {seen[key.secret]!r} and {key.name!r} have the same secret: give "
                              "each its own")
        seen[key.secret] = key.name
    return keys


def _checked(secret: str, where: str) -> bytes:
    if not secret.strip():
        raise SourceError(f"search service {where} is blank: set a real secret")
    if secret != secret.strip():
        raise SourceError(f"search service {where} has white space at its start or end, which an Authorization "
                          "header cannot carry: remove it")
    try:
        return secret.encode("ascii")
    except UnicodeEncodeError:
        raise SourceError(f"search service {where} holds characters beyond ASCII, which an Authorization header "
                          "cannot carry: use letters, digits and punctuation") from None
