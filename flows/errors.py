"""Which errors a user can act on, and how the command line reports them.

The types come from every layer (config, sources, chunking, embedding, store, deployments);
collecting them here lets the command line render them without importing connectors or
embedding itself. Imports happen inside the function: it runs only when something failed.
"""

from __future__ import annotations

import sys

CONFIG_PROBLEM = 2  # exit code of a bad config or deployment setting
FAILED = 1  # exit code of anything else the user can act on


class ServerError(RuntimeError):
    """No Prefect server, or it lacks what the command needs (a deployment, an artifact)."""


def user_error(exc: BaseException) -> tuple[list[str], int] | None:
    """(lines to print, exit code) for an error the user can act on; None for anything else (a bug)."""
    from vectormill.connectors.errors import SourceError
    from vectormill.embedding.base import EmbeddingError
    from vectormill.embedding.chunking import ChunkingError
    from vectormill.stores.faiss_store import StoreError
    from vectormill.stores.filters import FilterError
    from vectormill.stores.lock import StoreLockedError

    from .config import ConfigError
    from .deploy import DeploymentConfigError
    from .temporary_server import TemporaryServerError

    unreachable = _unreachable_server(exc)
    if unreachable is not None:
        return [unreachable], FAILED
    if isinstance(exc, ConfigError):
        return exc.problems, CONFIG_PROBLEM
    if isinstance(exc, (DeploymentConfigError, FilterError)):
        return [str(exc)], CONFIG_PROBLEM
    if isinstance(exc, (ChunkingError, EmbeddingError, SourceError, StoreError, StoreLockedError, ServerError,
                        TemporaryServerError)):
        return [str(exc)], FAILED
    return None


def _unreachable_server(exc: BaseException) -> str | None:
    """The line for a Prefect server that does not answer (Prefect's client raises httpx's transport
    errors, or a RuntimeError "Failed to reach API" chained to one); None for anything else."""
    httpx = sys.modules.get("httpx")  # only Prefect's client uses httpx here; not imported: not this error
    if httpx is None:
        return None
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, httpx.TransportError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    from .server import server_url

    return (f"cannot reach the Prefect server at {server_url() or 'PREFECT_API_URL'} ({type(cause).__name__}: "
            f"{cause}): start it (`prefect server start`) or fix PREFECT_API_URL")
