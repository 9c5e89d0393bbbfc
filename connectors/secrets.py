"""Secrets of sources (API tokens, bot passwords): from an environment variable or a Prefect Secret block.

Errors name where the secret was looked for, never its value. Prefect is imported only when a
block is named, so commands that read no block never import it.
"""

from __future__ import annotations

import os

from .errors import SourceError


def resolve_secret(*, env: str | None, block: str | None, what: str) -> str:
    """The secret from the environment variable `env`, else the Prefect Secret block `block`.

    `what` says whose secret it is, for the error ("HubSpot token of source 'crm'").
    """
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise SourceError(f"{what}: environment variable {env} is not set or empty; export it before the run")
        return value
    if block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(block).get()
        except Exception as exc:  # noqa: BLE001 - Prefect raises several kinds; none holds the value
            raise SourceError(
                f"{what}: Prefect Secret block {block!r} cannot be loaded ({type(exc).__name__}); "
                f"create it with `prefect block create secret` or check its name"
            ) from None
        if not isinstance(value, str) or not value:
            raise SourceError(f"{what}: Prefect Secret block {block!r} holds no text value")
        return value
    raise SourceError(f"{what}: no secret configured (set an environment variable name or a Prefect Secret block)")
