"""The write-ahead log on real files: torn tails are dropped, damage in the middle is refused."""

import pytest

from vectormill.stores import wal


def write_records(folder, payloads, first=1):
    writer = wal.WalWriter(folder, first)
    lsns = [writer.append(p) for p in payloads]
    writer.close()
    return lsns


def test_records_read_back_in_order(tmp_path):
    assert write_records(tmp_path, [b"a", b"bb", b"ccc"]) == [1, 2, 3]
    records, torn = wal.read_log(tmp_path)
    assert [(r.lsn, r.payload) for r in records] == [(1, b"a"), (2, b"bb"), (3, b"ccc")]
    assert torn is None


@pytest.mark.parametrize("cut", [1, 5, 14, 20])
def test_torn_tail_is_dropped_and_truncated(tmp_path, cut):
    write_records(tmp_path, [b"first", b"second-record"])
    segment = wal.segments(tmp_path)[0]
    data = segment.read_bytes()
    segment.write_bytes(data[:-cut])
    records, torn = wal.read_log(tmp_path)
    assert [r.payload for r in records] == [b"first"]
    assert torn is not None
    wal.truncate_torn_tail(torn)
    writer = wal.WalWriter(tmp_path, 2)
    writer.append(b"again")
    writer.close()
    records, torn = wal.read_log(tmp_path)
    assert [r.payload for r in records] == [b"first", b"again"] and torn is None


def test_bit_flip_followed_by_valid_records_is_corruption(tmp_path):
    write_records(tmp_path, [b"one-payload", b"two-payload", b"three"])
    segment = wal.segments(tmp_path)[0]
    data = bytearray(segment.read_bytes())
    data[len(wal.MAGIC) + wal.HEADER.size + 2] ^= 0x10  # inside the first record's payload
    segment.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorruptError, match="valid records follow"):
        wal.read_log(tmp_path)


def test_damage_in_an_older_segment_is_corruption(tmp_path):
    writer = wal.WalWriter(tmp_path, 1)
    writer.append(b"one")
    writer.rotate()
    writer.append(b"two")
    writer.close()
    first = wal.segments(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-1])
    with pytest.raises(wal.WalCorruptError, match="newer segments follow"):
        wal.read_log(tmp_path)


def test_segments_covered_by_a_checkpoint_are_removed(tmp_path):
    writer = wal.WalWriter(tmp_path, 1)
    writer.append(b"1")
    writer.append(b"2")
    writer.rotate()  # segment starting at 3
    writer.append(b"3")
    writer.rotate()  # segment starting at 4
    writer.remove_segments_before(2)
    assert [p.name for p in wal.segments(tmp_path)] == [wal.segment_name(3), wal.segment_name(4)]
    writer.remove_segments_before(3)
    assert [p.name for p in wal.segments(tmp_path)] == [wal.segment_name(4)]
    writer.close()
