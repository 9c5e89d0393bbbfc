"""The deletion safety valve: how much of a source one run may delete, decided before it deletes anything.

Pure decisions: no Prefect, no store, no source. Every deletion a run plans counts (documents no
longer listed, a wiki's delete log, a CRM's archivals, documents gone or empty at the source).
"""

from __future__ import annotations


def confirm_hint(source: str) -> str:
    return f"if that is right, confirm it with `vectormill backfill --source {source} --allow-deletions`"


def deletion_refusal(source: str, deleting: int, stored: int, max_ratio: float, *, listed_nothing: bool = False,
                     allowed: bool = False, where: str | None = None) -> str | None:
    """Why the run must delete nothing of `source`, or None when its deletions may go ahead.

    `deleting` of the `stored` documents the store held before the run would go; above
    `max_ratio` of them, or all of them because a full listing found nothing (a share not
    mounted, an emptied folder: `where` names it), the run is refused unless `allowed`.
    """
    if allowed or not stored:
        return None
    if listed_nothing:
        place = f" at {where!r}" if where else ""
        return (f"the source lists no documents{place} while the store holds {stored} of it (not mounted, or "
                f"emptied?); nothing was deleted; {confirm_hint(source)}")
    if deleting / stored > max_ratio:
        return (f"this run would delete {deleting} of its {stored} stored documents ({deleting / stored:.0%}), "
                f"above max_delete_ratio = {max_ratio:g}; nothing was deleted; {confirm_hint(source)}")
    return None
