"""The MBFile memo a Manifest parse asks (sync/mbfilememo.py `WindowMemo`) against a dict model: the old memo's shard
of the row being read, packed as the cache holds it, answers as that shard's dict would; what a shard's rows used or
decoded is its fresh memo (None only when that is the old shard's), whatever order the rows ask in. And a day-2 parse
of large shards holds the old memo packed: no object per value (tracemalloc, a real Manifest.db)."""

from __future__ import annotations

import tracemalloc
from array import array
from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem
from phonevault.sync.catalogshards import parse_shards, shard_of_id, unpacked_memo
from phonevault.sync.manifest import CatalogEntry, file_id, write_manifest_db
from phonevault.sync.mbfilememo import WindowMemo

FUNCS = (_row, _row_problem, _duplicate_problems)
KEYS = [bytes([k]) * 16 for k in range(12)]  # few keys: rows share them, ask again, out of order
VALUES = st.lists(st.one_of(st.integers(-(1 << 40), 1 << 40), st.none(), st.text(max_size=5)), min_size=7, max_size=7)


def packed(memo: dict[bytes, list]) -> list:
    """A shard memo as the parse child is given it: the cache's MEMO_FORMAT 3 value, unpacked once."""
    values = [msgpack.packb(v) for v in memo.values()]
    ends = array("I", [sum(len(v) for v in values[: i + 1]) for i in range(len(values))])
    return msgpack.unpackb(msgpack.packb([b"".join(memo), b"".join(values), ends.tobytes()]))


def as_dict(memo: bytes) -> dict[bytes, list]:
    keys, values, raw_ends = msgpack.unpackb(memo)
    ends = array("I", raw_ends)
    starts = [0, *ends[:-1]]
    got = {
        keys[16 * i : 16 * i + 16]: msgpack.unpackb(values[a:b])
        for i, (a, b) in enumerate(zip(starts, ends, strict=True))
    }
    assert len(got) == len(ends)
    return got


shards_st = st.dictionaries(
    st.sampled_from(["00", "0a", "3f", "a1", "ff"]),
    st.tuples(
        st.one_of(st.none(), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)),  # the old memo's shard
        st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=12),  # each row's key, what decoding it gives
    ),
    max_size=5,
)


@given(shards_st)
@settings(max_examples=300, deadline=None)
def test_window_memo_answers_as_the_old_shard_and_keeps_what_rows_used(shards) -> None:
    order = sorted(shards)
    old = [(s, packed(shards[s][0])) for s in order if shards[s][0] is not None]
    memo = WindowMemo(iter(old), shard_of_id)
    for s in order:
        if not shards[s][1]:  # no row of it: the parse sends no such shard
            continue
        model = dict(shards[s][0] or {})
        used: dict[bytes, list] = {}
        for i, (key, decoded) in enumerate(shards[s][1]):
            memo.at_row(f"{s}{i:038x}")
            got = memo.get(key)
            assert got == model.get(key)
            if got is None:  # as read_manifest_db does: decoded, and remembered
                memo[key] = model[key] = decoded
            used.setdefault(key, model[key])
        fresh = memo.take(s)
        if fresh is None:
            assert used == (shards[s][0] or {})
        else:
            assert as_dict(fresh) == used


def test_a_damaged_old_memo_is_read_as_empty() -> None:
    """A value of another shape (MEMO_FORMAT 2's map, truncated bins) only means decoding again."""
    damaged = [
        ("00", {KEYS[0]: [1, 2, 3, None, 4, False, "x"]}),
        ("01", [KEYS[0][:15], b"\x97" + b"\x01" * 7, b"\x08\x00\x00\x00"]),
        ("02", [KEYS[0], b"\x93\x01\x02\x03", b"\x04\x00\x00\x00"]),  # a list of 3, not 7
    ]
    assert list(unpacked_memo([("03", b"\xc1"), ("04", b"\x93\x01")])) == [("03", None), ("04", None)]
    memo = WindowMemo(iter(damaged), shard_of_id)
    for s, _v in damaged:
        memo.at_row(s + "0" * 38)
        assert memo.get(KEYS[0]) is None


def test_a_day_two_parse_holds_the_old_memo_packed(tmp_path) -> None:
    """Three shards of 6 000 rows, one row changed in each, the old memo given as the child is given it (each shard
    as the cache holds it, unpacked as it is reached): no value of it is ever an object. The peak is the shard's
    packed rows, its message, and memos of ~65 bytes a row (MEMO_FORMAT 2's window peaked at 7.8 MB here, 3.1 now)."""
    entries = []
    for shard in ("3a", "c5", "e1"):
        for i in range(6000):
            path = f"Media/DCIM/{shard}/IMG_{i:05d}.HEIC"
            fid = shard + file_id("CameraRollDomain", path)[2:]
            entries.append(CatalogEntry(fid, "CameraRollDomain", path, 1, i, 0o100644, 1_600_000_000 + i))
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, entries)
    old = [(m[1], m[6]) for m in map(msgpack.unpackb, parse_shards(db, iter(()), None, *FUNCS)) if m[0] == b"shard"]
    write_manifest_db(db, [replace(e, size=101) if e.size == 100 else e for e in entries])
    sent = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for message in parse_shards(db, unpacked_memo(iter(old)), None, *FUNCS):
            got = msgpack.unpackb(message)
            sent.append((got[1], len(got[2]), None if got[6] is None else len(got[6])) if got[0] == b"shard" else ())
            del message, got
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert [s[0] for s in sent[:-1]] == ["3a", "c5", "e1"] and all(s[2] for s in sent[:-1])  # each shard changed
    rows_bytes, memo_bytes = max(s[1] for s in sent[:-1]), max(s[2] for s in sent[:-1])
    assert peak < 3 * rows_bytes + 4 * memo_bytes + (256 << 10), (peak, rows_bytes, memo_bytes)
