"""The primary's generations: seal pending rows and merge runs of segments into new segments, commit each
generation, prune what no kept generation names, and find damaged segment files.

A generation is committed in this order, so that a crash anywhere leaves the previous one intact:
the segment files are written and published under their sha256 (fsync, rename); the manifest is
written (fsync, rename); then ONE catalog transaction records the generation, which segment now
holds which rows, and the generations no longer kept. Only after that commit are the files that
no kept generation names removed. Files and manifests that a crash leaves behind, which no
committed generation names, are removed at the next writable open.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .durable import file_sha256, fingerprint, fsync_dir, write_atomically
from .manifest import (
    MANIFESTS, SEGMENTS, FileEntry, SegmentEntry, build_manifest, files_of, generation_of, manifest_name,
    parse_manifest, referenced_files, segments_of,
)
from .plan import MergePolicy, SegmentLoad, plan_merges
from .settings import StoreSettings

log = logging.getLogger("vectormill.store")

QUARANTINE = "quarantine"
# Written by `store restore` before it changes anything, removed when it is done: an open that finds
# it finishes the restore by setting aside (never deleting) what the current database does not name.
RESTORING = "RESTORING"
# The newest generation a catalog of this store committed, written beside identity.json after each commit: a
# database rolled back (its -wal lost, an older copy put back) records less, and is refused rather than used.
COMMITTED = "COMMITTED"


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def used_generation_numbers(path: Path, quarantined: bool = True) -> list[int]:
    """Every generation number that has a manifest in manifests/ or (`quarantined`) anywhere in quarantine/."""
    names = [p.name for p in (path / MANIFESTS).glob("*")]
    names += [p.name for p in (path / QUARANTINE).rglob("*.json")] if quarantined else []
    return [number for number in map(generation_of, names) if number is not None]


def current_manifest(catalog: Catalog) -> dict[str, Any] | None:
    """The manifest of the newest generation the catalog records (as of its snapshot, for a reader)."""
    manifests = catalog.manifests()
    return parse_manifest(manifests[0][1], f"{MANIFESTS}/{manifest_name(manifests[0][0])}") if manifests else None


def record_committed(path: Path, generation: int) -> None:
    write_atomically(path / COMMITTED, json.dumps({"generation": generation}).encode())


def committed_generation(path: Path) -> int | None:
    """The newest generation recorded as committed; None for a store that never recorded one (older, or new).
    ValueError when the record is unreadable."""
    try:
        return int(json.loads((path / COMMITTED).read_text())["generation"])
    except FileNotFoundError:
        return None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{COMMITTED}: {exc}") from None


def rollback_problem(path: Path, catalog_generation: Callable[[], int]) -> str | None:
    """Why the catalog cannot be used: it records an older generation than one committed before (it was rolled
    back); None when it can. `catalog_generation` is asked after the record is read: a writer that commits meanwhile
    writes its record after its commit, so a sound catalog never reads as older."""
    try:
        committed = committed_generation(path)
    except ValueError:
        return f"{COMMITTED} is unreadable: run `vectormill store verify` to check the store"
    if committed is None:
        return None  # written before this record, or never committed a generation
    found = catalog_generation()
    if found >= committed:
        return None
    return (f"store {str(path)!r}: its database records generation {found}, but generation {committed} was committed "
            f"before ({COMMITTED}, {MANIFESTS}/): the database was rolled back (its -wal file lost, or an older copy "
            "put back). Nothing was changed or deleted; run `vectormill store restore` to rebuild it from the newest "
            "generation")


def damaged_files(manifest: dict[str, Any], checked: dict[str, str], locate: Callable[[str], Path]
                  ) -> tuple[dict[str, str], list[tuple[str, str, int, str]]]:
    """Files of a generation that are missing or do not match it, and the files found intact on re-hashing.

    A file whose fingerprint is the one recorded when it was written or last checked is taken as
    it is (a stat per file); any other is hashed. `store verify` hashes everything.
    """
    damaged: dict[str, str] = {}
    rechecked = []
    for name, entry in files_of(manifest).items():
        path = locate(name)
        found = fingerprint(path)
        if found is None:
            damaged[name] = "missing"
        elif found != checked.get(name):
            sha, size = file_sha256(path)
            if size != entry.bytes:
                damaged[name] = f"size {size} bytes, manifest says {entry.bytes}"
            elif sha != entry.sha256:
                damaged[name] = "sha256 mismatch (file corrupt)"
            else:
                rechecked.append((name, sha, size, found))
    return damaged, rechecked


def set_aside(path: Path, catalog: Catalog, database: str, quarantine: Path) -> list[str]:
    """Move into `quarantine` every database, manifest and segment file that the current database does not name."""
    kept_manifests = {manifest_name(g) for g, _ in catalog.manifests()}
    kept_files = referenced_files(parse_manifest(m) for _, m in catalog.manifests())
    candidates = [p for p in path.glob("*.sqlite*") if not p.name.startswith(database)]
    candidates += [p for p in (path / MANIFESTS).glob("*") if p.name not in kept_manifests]
    candidates += [p for p in (path / SEGMENTS).glob("*") if p.name not in kept_files]
    moved = []
    for item in candidates:
        target = quarantine / item.relative_to(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item, target)
        moved.append(str(item.relative_to(path)))
    for folder in {quarantine, *(quarantine / part for part in (MANIFESTS, SEGMENTS)), path,
                   path / MANIFESTS, path / SEGMENTS}:
        if folder.is_dir():
            fsync_dir(folder)
    return moved


def tombstones_by_part(tombstones: Sequence[tuple[int, int]], highs: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Split a new segment's tombstones among its parts (split by ascending id ranges ending at `highs`): each goes
    to the first part whose range ends at or above its id, so a chunk deleted and written again lands in the same
    part as the tombstone of its older copy, and a restore replaying part by part never holds both copies."""
    parts: list[list[tuple[int, int]]] = [[] for _ in highs]
    for tombstone in tombstones:
        parts[min(bisect.bisect_left(highs, tombstone[1]), len(highs) - 1)].append(tombstone)
    return parts


class Generations:
    def __init__(self, path: Path, settings: StoreSettings, identity: dict[str, Any], catalog: Catalog,
                 notes: list[str]):
        self.path = path
        self.settings = settings
        self.identity = identity
        self.catalog = catalog
        self.notes = notes
        self.segments_dir = path / SEGMENTS
        self.manifests_dir = path / MANIFESTS

    # ---- what the current generation is ------------------------------------------------------
    def current_manifest(self) -> dict[str, Any] | None:
        return current_manifest(self.catalog)

    def current_segments(self) -> list[SegmentEntry]:
        manifest = self.current_manifest()
        return segments_of(manifest) if manifest else []

    def next_generation(self) -> int:
        """Past every number present, quarantined ones included, so that no copy is ever overwritten."""
        return max([self.catalog.counter("generation"), self.catalog.counter("seen_generation"),
                    *used_generation_numbers(self.path)]) + 1

    # ---- making generations ----------------------------------------------------------------
    def seal(self) -> int:
        """Seal the rows written since the last checkpoint into new segments, as a new generation."""
        entries, change = self._rewrite(None, prefix=False)
        return self._commit(self.current_segments() + entries, [change], entries)

    def compact(self, everything: bool, replacing: int | None = None) -> int | None:
        """Merge what the policy asks for (`everything`: the whole store) as a new generation; None if nothing.
        `replacing`: the generation this checkpoint sealed just before, same state in other segments, dropped in the
        same commit, so that a checkpoint leaves one generation and `keep_generations` counts checkpoints."""
        segments = self.current_segments()
        dead = self.catalog.dead_counts()
        policy = MergePolicy(self.settings.merge_factor, self.settings.max_segment_vectors, self.settings.max_dead_ratio)
        runs = plan_merges([SegmentLoad(s.vectors, dead.get(s.seq, 0)) for s in segments], policy, everything)
        return self._rewrite_runs(segments, runs, replacing) if runs else None

    def rebuild(self, seqs: set[int]) -> int:
        """Rewrite these segments, each alone, from the catalog (their files are damaged)."""
        segments = self.current_segments()
        runs = [range(p, p + 1) for p, segment in enumerate(segments) if segment.seq in seqs]
        return self._rewrite_runs(segments, runs)

    def _rewrite_runs(self, segments: list[SegmentEntry], runs: Sequence[range], replacing: int | None = None) -> int:
        result: list[SegmentEntry] = []
        changes: list[Callable[[], None]] = []
        new: list[SegmentEntry] = []
        position = 0
        for run in runs:
            result += segments[position : run.start]
            entries, change = self._rewrite([segments[p].seq for p in run], prefix=run.start == 0)
            result += entries
            new += entries
            changes.append(change)
            position = run.stop
        return self._commit(result + segments[position:], changes, new, replacing)

    def _rewrite(self, run: list[int] | None, prefix: bool) -> tuple[list[SegmentEntry], Callable[[], None]]:
        """New segments holding the live rows of `run` (None: the pending rows), each with the tombstones of its id
        range; the last one also carries the table rows and removals. Returns them and the catalog change recording it."""
        from .segments import SegmentExtras, write_segment  # FAISS loads only where segments are written

        catalog = self.catalog
        # A seal writes segments of at most checkpoint_every_vectors: a checkpoint holds one of them in memory, however
        # many vectors one write made pending (the commit of a document written in parts makes all of its own).
        limit = self.settings.max_segment_vectors if run is not None else min(
            self.settings.max_segment_vectors, self.settings.checkpoint_every_vectors)
        ranges: list[tuple[int, int, int]] = catalog.chunk_ranges(run, limit)
        tombstones = catalog.tombstones(run)
        tables, deletions = catalog.table_rows(run), [] if prefix else catalog.deletions(run)
        if not ranges:
            if not (tombstones or deletions or any(tables.values())):
                return [], lambda: catalog.reassign(run, [], [], prefix)
            ranges = [(1, 0, 0)]  # only other rows: a segment without vectors
        by_part = tombstones_by_part(tombstones, [high for _, high, _ in ranges])
        entries, parts = [], []
        for number, (low, high, count) in enumerate(ranges):
            seq = catalog.next_segment()
            last = number == len(ranges) - 1
            extras = SegmentExtras(by_part[number], tables if last else {}, deletions if last else [])
            entry, problem = write_segment(
                self.segments_dir, seq, count, lambda: catalog.chunk_batches(run, low, high),
                extras, self.identity["index_factory"], self.settings.train_vectors, catalog.dimension,
                self.settings.recall_target)
            if problem:
                self.note(f"{problem}; the segment stays exact (Flat) until a merge retrains it")
            entries.append(entry)
            if count:
                parts.append((seq, low, high))
        carriers = [(entry.seq, high) for entry, (_, high, _) in zip(entries, ranges)]
        return entries, lambda: catalog.reassign(run, parts, carriers, prefix)

    def _commit(self, segments: list[SegmentEntry], changes: Sequence[Callable[[], None]],
                new: list[SegmentEntry], replacing: int | None = None) -> int:
        generation = self.next_generation()
        catalog = self.catalog
        body = {"generation": generation, "lsn": catalog.counter("lsn"),
                "created_at": datetime.now(timezone.utc).isoformat(), "vectors": catalog.counter("vectors"),
                "documents": catalog.counter("documents"), "model": self.identity["model"],
                "dimension": self.identity["dimension"], "index_factory": self.identity["index_factory"],
                "store_id": self.identity["store_id"], "timeline": self.identity["timeline"]}
        manifest = build_manifest(body, segments)
        self.manifests_dir.mkdir(exist_ok=True)
        write_atomically(self.manifests_dir / manifest_name(generation), manifest)
        written = [(f.name, f.sha256, f.bytes, fingerprint(self.segments_dir / f.name)) for s in new for f in s.files]
        with catalog.transaction():
            for change in changes:
                change()
            replaced = [replacing] if replacing is not None else []
            catalog.drop_generations(replaced)
            dropped = replaced + catalog.add_generation(generation, manifest, self.settings.keep_generations)
            catalog.record_files(written)
        record_committed(self.path, generation)
        self._prune(dropped)
        return generation

    def _prune(self, dropped: Sequence[int]) -> None:
        """Remove the manifests of generations no longer kept, then every segment file no kept generation names."""
        for generation in dropped:
            (self.manifests_dir / manifest_name(generation)).unlink(missing_ok=True)
        if dropped:
            fsync_dir(self.manifests_dir)
        kept = referenced_files(parse_manifest(m) for _, m in self.catalog.manifests())
        removed = False
        for file in self.segments_dir.glob("*"):
            if file.name not in kept:
                file.unlink()
                removed = True
        if removed:
            fsync_dir(self.segments_dir)
        forgotten = set(self.catalog.checked_files()) - kept
        if forgotten:
            with self.catalog.transaction():
                self.catalog.forget_files(forgotten)

    # ---- at a writable open ------------------------------------------------------------------
    def tidy(self) -> None:
        """Finish what a crash interrupted: set aside after a restore, remove a checkpoint's leftovers, and
        bring back manifest files from the catalog's copies."""
        for folder in (self.segments_dir, self.manifests_dir):
            folder.mkdir(exist_ok=True)
        restoring = self.path / RESTORING
        if restoring.is_file():
            quarantine = self.path / QUARANTINE / json.loads(restoring.read_text())["quarantine"]
            moved = set_aside(self.path, self.catalog, self.identity["database"], quarantine)
            restoring.unlink()
            fsync_dir(self.path)
            if moved:
                self.note(f"finished an interrupted `store restore`: set aside {len(moved)} file(s) in "
                          f"{QUARANTINE}/{quarantine.name}/")
        for leftover in [*self.path.glob(".tmp-*"), *self.segments_dir.glob(".tmp-*"), *self.manifests_dir.glob(".tmp-*")]:
            leftover.unlink()
        kept = dict(self.catalog.manifests())
        for file in self.manifests_dir.glob("*"):
            if generation_of(file.name) not in kept:
                file.unlink()  # a checkpoint's manifest whose commit a crash prevented: never used
        for generation, manifest in kept.items():
            file = self.manifests_dir / manifest_name(generation)
            if not file.is_file() or file.read_bytes() != manifest:
                if file.is_file():
                    self.note(f"manifest {MANIFESTS}/{file.name} did not match the database's copy; rewritten from it")
                write_atomically(file, manifest)
        self._prune([])

    def repair(self, damaged: dict[str, str], fetchers: Sequence[Callable[[FileEntry, Path], str]]) -> None:
        """Set damaged files of kept generations aside, fetch an identical copy (`fetchers`: replicas), or rewrite the
        current generation's segments that name them from the catalog, which holds every live row and vector; older
        generations naming a file no copy holds are set aside."""
        quarantine = self.path / QUARANTINE / f"damaged-{utc_stamp()}"
        for name in damaged:
            if (self.segments_dir / name).exists():
                quarantine.mkdir(parents=True, exist_ok=True)
                os.replace(self.segments_dir / name, quarantine / name)
        fsync_dir(self.segments_dir)
        manifest = self.current_manifest()
        entries = {name: entry for _, kept in reversed(self.catalog.manifests())
                   for name, entry in files_of(parse_manifest(kept)).items()}
        recovered: dict[str, str] = {}
        for name in damaged:
            for fetch in fetchers:
                try:
                    recovered[name] = fetch(entries[name], self.segments_dir)
                    break
                except Exception as exc:  # noqa: BLE001 - another copy, or the catalog, serves instead
                    log.warning("could not fetch %s: %s", name, exc)
        with self.catalog.transaction():
            self.catalog.record_files([(name, entries[name].sha256, entries[name].bytes,
                                        fingerprint(self.segments_dir / name)) for name in recovered])
        rebuilt = {s.seq for s in segments_of(manifest) if any(f.name in damaged and f.name not in recovered
                                                                 for f in s.files)}
        how = "; ".join(f"{name}: {detail}" for name, detail in damaged.items())
        sources = sorted(set(recovered.values()))
        done = []
        if recovered:
            done.append(f"{len(recovered)} file(s) fetched from replica {', '.join(map(repr, sources))}")
        if rebuilt:
            generation = self.rebuild(rebuilt)
            done.append(f"{len(rebuilt)} segment(s) rebuilt from the database as generation {generation}")
        dropped = self._drop_generations_naming(set(damaged) - set(recovered))
        if dropped:
            done.append(f"older generation(s) {', '.join(map(str, dropped))} naming a file no copy holds set aside")
        self.note(f"CORRUPT SEGMENT FILE in {str(self.path)!r}: {how} (moved to {QUARANTINE}/{quarantine.name}/). "
                  f"Recovered: {'; '.join(done)}; no acknowledged write was lost. "
                  "Run `vectormill store verify` to check every copy.")

    def _drop_generations_naming(self, missing: set[str]) -> list[int]:
        """Older kept generations that name files no longer present cannot be restored from here: set them aside."""
        quarantine = self.path / QUARANTINE / f"damaged-{utc_stamp()}"
        manifests = self.catalog.manifests()
        broken = [g for g, m in manifests[1:] if missing & set(files_of(parse_manifest(m)))]
        if not broken:
            return []
        with self.catalog.transaction():
            self.catalog.drop_generations(broken)
        quarantine.mkdir(parents=True, exist_ok=True)
        for generation in broken:
            source = self.manifests_dir / manifest_name(generation)
            if source.exists():
                os.replace(source, quarantine / source.name)
        fsync_dir(self.manifests_dir)
        self._prune([])
        return broken

    def note(self, message: str) -> None:
        self.notes.append(message)
        log.warning(message)
