"""Which segments a compaction rewrites: a logarithmic merge policy over the generation's ordered segments.

Pure functions. A merge takes a contiguous run of segments (their order carries the order of the
other tables' changes) and writes its live rows as one segment in the run's place. Segments are
grouped in size tiers (a factor of `merge_factor` apart): once `merge_factor` neighbouring
segments share a tier they are merged, so a vector is rewritten about log(n) times over its life
and a checkpoint that adds one document writes one small segment, not the store. A segment whose
share of deleted or replaced rows reaches `max_dead_ratio` is rewritten alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentLoad:
    vectors: int  # rows in the segment's index
    dead: int  # of them deleted or replaced since

    @property
    def live(self) -> int:
        return self.vectors - self.dead


@dataclass(frozen=True)
class MergePolicy:
    merge_factor: int
    max_segment_vectors: int
    max_dead_ratio: float


def tier(vectors: int, merge_factor: int) -> int:
    """0 below `merge_factor` live vectors, 1 below its square, and so on."""
    level = 0
    while vectors >= merge_factor:
        vectors //= merge_factor
        level += 1
    return level


def pack(positions: range, segments: Sequence[SegmentLoad], max_vectors: int) -> list[range]:
    """Split a contiguous stretch into contiguous runs of at most `max_vectors` live vectors (one segment at least)."""
    runs: list[range] = []
    start, total = positions.start, 0
    for position in positions:
        live = segments[position].live
        if position > start and total + live > max_vectors:
            runs.append(range(start, position))
            start, total = position, 0
        total += live
    if start < positions.stop:
        runs.append(range(start, positions.stop))
    return runs


def plan_merges(segments: Sequence[SegmentLoad], policy: MergePolicy, everything: bool = False) -> list[range]:
    """Runs of segment positions, oldest first, each to be rewritten as one segment.

    `everything` (an explicit compaction): every segment is rewritten, merged into as few
    segments as `max_segment_vectors` allows, dropping every deleted row and retraining.
    """
    if everything:
        return pack(range(len(segments)), segments, policy.max_segment_vectors) if segments else []
    runs: list[range] = []
    tiers = [tier(segment.live, policy.merge_factor) for segment in segments]
    end = len(segments)
    while end > 0:  # maximal stretches of one tier, from the newest back
        start = end - 1
        while start > 0 and tiers[start - 1] == tiers[end - 1]:
            start -= 1
        if end - start >= policy.merge_factor:
            runs.extend(run for run in pack(range(start, end), segments, policy.max_segment_vectors) if len(run) > 1)
        end = start
    merged = {position for run in runs for position in run}
    for position, segment in enumerate(segments):
        if position not in merged and segment.vectors and segment.dead / segment.vectors >= policy.max_dead_ratio:
            runs.append(range(position, position + 1))
    return sorted(runs, key=lambda run: run.start)
