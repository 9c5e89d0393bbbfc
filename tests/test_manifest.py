"""Generation manifests and the merge plan: pure functions over bytes, dicts and segment sizes."""

import json

import pytest

from vectormill.stores.manifest import (
    FileEntry, ManifestError, SegmentEntry, build_manifest, check_files, files_of, generation_of, manifest_bytes,
    manifest_name, parse_manifest, referenced_files, segments_of,
)
from vectormill.stores.plan import MergePolicy, SegmentLoad, pack, plan_merges, tier


def entry(letter, size, kind="faiss"):
    return FileEntry(f"{letter * 64}.{kind}", letter * 64, size)


SEGMENTS = [SegmentEntry(1, "flat", 10, entry("a", 100), entry("b", 20, "rows")),
            SegmentEntry(4, "factory", 0, None, entry("c", 30, "rows"))]


def test_round_trip_keeps_body_segments_and_files():
    manifest = parse_manifest(build_manifest({"generation": 3, "lsn": 7}, SEGMENTS))
    assert (manifest["generation"], manifest["lsn"]) == (3, 7)
    assert segments_of(manifest) == SEGMENTS
    assert files_of(manifest)["b" * 64 + ".rows"] == entry("b", 20, "rows")
    assert manifest_bytes(manifest) == 150
    assert referenced_files([manifest, parse_manifest(build_manifest({"generation": 4}, SEGMENTS[1:]))]) == {
        "a" * 64 + ".faiss", "b" * 64 + ".rows", "c" * 64 + ".rows"}


def test_manifest_names_stand_for_generations():
    assert manifest_name(12) == "00000012.json" and generation_of("00000012.json") == 12
    assert [generation_of(name) for name in ("12.json", "0000001x.json", "00000012.rows", ".tmp-00000012.json")] == [
        None, None, None, None]


def test_edited_manifest_is_refused():
    data = json.loads(build_manifest({"generation": 3, "lsn": 7}, SEGMENTS))
    data["lsn"] = 8
    with pytest.raises(ManifestError, match="checksum mismatch"):
        parse_manifest(json.dumps(data).encode(), "g/manifest.json")


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"generation": 1}'])
def test_damaged_bytes_are_refused(damage):
    with pytest.raises(ManifestError):
        parse_manifest(damage)


def test_another_format_is_refused():
    with pytest.raises(ManifestError, match="unknown manifest format 2"):
        parse_manifest(build_manifest({"generation": 1}, SEGMENTS), expected_format=1)


def test_check_files_names_each_problem():
    manifest = parse_manifest(build_manifest({"generation": 1}, SEGMENTS))
    a, b, c = ("a" * 64 + ".faiss", "b" * 64 + ".rows", "c" * 64 + ".rows")
    actual = {a: ("f" * 64, 100), b: ("b" * 64, 19), c: ("c" * 64, 30)}
    problems = check_files(manifest, actual, "backup")
    assert [(p.where, p.file) for p in problems] == [("backup", a), ("backup", b)]
    assert "sha256 mismatch" in problems[0].detail and "size 19" in problems[1].detail
    assert check_files(manifest, {b: ("b" * 64, 20), c: ("c" * 64, 30)}, "p")[0].detail == "missing"
    assert check_files(manifest, {a: ("a" * 64, 100), b: ("b" * 64, 20), c: ("c" * 64, 30)}, "p") == []


# ---- the merge plan ---------------------------------------------------------------------------
POLICY = MergePolicy(merge_factor=4, max_segment_vectors=1000, max_dead_ratio=0.5)


def loads(*sizes, dead=None):
    return [SegmentLoad(size, (dead or {}).get(position, 0)) for position, size in enumerate(sizes)]


def test_tiers_are_powers_of_the_merge_factor():
    assert [tier(n, 4) for n in (0, 1, 3, 4, 15, 16, 63, 64)] == [0, 0, 0, 1, 1, 2, 2, 3]


def test_nothing_to_merge_while_each_tier_holds_fewer_than_the_factor():
    assert plan_merges(loads(900, 300, 200, 40, 30, 20, 5, 1), POLICY) == []


def test_the_newest_stretch_of_one_tier_is_merged_once_it_reaches_the_factor():
    assert plan_merges(loads(900, 300, 5, 6, 7, 8), POLICY) == [range(2, 6)]
    assert plan_merges(loads(5, 6, 7, 300, 1, 2, 3), POLICY) == []  # stretches are contiguous: neither reaches 4


def test_a_merge_never_makes_a_segment_larger_than_the_maximum():
    assert plan_merges(loads(300, 300, 300, 300, 300), POLICY) == [range(0, 3), range(3, 5)]
    assert pack(range(0, 3), loads(2000, 1, 1), 1000) == [range(0, 1), range(1, 3)]


def test_a_segment_with_too_many_dead_rows_is_rewritten_alone():
    plan = plan_merges(loads(900, 100, 60, dead={0: 450, 2: 20}), POLICY)
    assert plan == [range(0, 1)]
    assert plan_merges(loads(50, dead={0: 50}), POLICY) == [range(0, 1)]  # wholly dead: rewritten to nothing


def test_segments_without_vectors_merge_like_the_smallest():
    assert plan_merges(loads(900, 0, 0, 0, 0), POLICY) == [range(1, 5)]


def test_everything_packs_the_whole_store():
    assert plan_merges(loads(900, 300, 5, dead={0: 800}), POLICY, everything=True) == [range(0, 3)]
    assert plan_merges(loads(900, 300, 5), POLICY, everything=True) == [range(0, 1), range(1, 3)]
    assert plan_merges([], POLICY, everything=True) == []
