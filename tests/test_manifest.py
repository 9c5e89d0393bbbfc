"""Checkpoint manifests: pure functions over bytes and dicts."""

import json

import pytest

from vectormill.stores.manifest import ManifestError, build_manifest, check_files, parse_manifest

FILES = {"index.faiss": ("a" * 64, 10), "meta.sqlite": ("b" * 64, 20)}


def test_round_trip_keeps_body_and_files():
    manifest = parse_manifest(build_manifest({"generation": 3, "lsn": 7}, FILES))
    assert (manifest["generation"], manifest["lsn"]) == (3, 7)
    assert manifest["files"]["meta.sqlite"] == {"sha256": "b" * 64, "bytes": 20}


def test_edited_manifest_is_refused():
    data = json.loads(build_manifest({"generation": 3, "lsn": 7}, FILES))
    data["lsn"] = 8
    with pytest.raises(ManifestError, match="checksum mismatch"):
        parse_manifest(json.dumps(data).encode(), "g/manifest.json")


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"generation": 1}'])
def test_damaged_bytes_are_refused(damage):
    with pytest.raises(ManifestError):
        parse_manifest(damage)


def test_check_files_names_each_problem():
    manifest = parse_manifest(build_manifest({"generation": 1}, FILES))
    actual = {"index.faiss": ("c" * 64, 10), "meta.sqlite": ("b" * 64, 19)}
    problems = check_files(manifest, actual, "backup")
    assert [(p.where, p.file) for p in problems] == [("backup", "index.faiss"), ("backup", "meta.sqlite")]
    assert "sha256 mismatch" in problems[0].detail and "size 19" in problems[1].detail
    assert check_files(manifest, {"index.faiss": None, "meta.sqlite": FILES["meta.sqlite"]}, "p")[0].detail == "missing"
    assert check_files(manifest, dict(FILES), "p") == []
