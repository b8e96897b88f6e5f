"""`parse_shards` packs each row as it is read (sync/catalogshards.py `_ShardPacker`): its messages are the very bytes
the construction it replaced gave (every shard's rows as CatalogEntry objects, then lists packed at once), over
generated Manifest.dbs (real SQLite files), a fresh parse and one with the first parse's memo, and shards large enough
for msgpack's 16- and 32-bit headers. Each shard's memo (sync/mbfilememo.py) is what its decodable rows decode to
(None: the old one, which is that), whichever old memo the parse had."""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterator

import blake3
import msgpack
from hypothesis import given, settings

from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem
from phonevault.sync.catalogshards import conforms, parse_shards, shard_of_id
from phonevault.sync.layouts import MANIFEST_DB
from phonevault.sync.manifest import MANIFEST_DB_SCHEMA, CatalogEntry, RowProblem, _decode, read_manifest_db
from phonevault.sync.mbfile import encode_mbfile
from tests.sync.test_scale_catalog import rows_st, write_db

FUNCS = (_row, _row_problem, _duplicate_problems)


def parse_shards_before(source, old, where, pack_row, row_problem, duplicates) -> Iterator[bytes]:
    """`parse_shards` as it was at ebca90b, less the file sizes it sent beside the rows (the rows hold them): a
    shard's rows held, then packed at once (the oracle); with a plain dict for memo and no memo sent (nil: the
    memo is checked on its own, `memos_are_the_rows`)."""
    memo: dict[bytes, list] = {}
    row_problems: list[RowProblem] = []
    shard: str | None = None
    rows: list[CatalogEntry] = []

    def packed() -> bytes:
        out_rows, dups, group = [], [], []
        conforming = True
        for c in rows:
            if group and group[0].file_id != c.file_id:
                dups += duplicates(group) if len(group) > 1 else []
                group = []
            group.append(c)
            out_rows.append(pack_row(c))
            conforming = conforming and conforms(c)
        dups += duplicates(group) if len(group) > 1 else []
        probs = [row_problem(p, MANIFEST_DB.record) for p in row_problems]
        row_problems.clear()
        packed_rows = msgpack.packb(out_rows)
        return msgpack.packb([b"shard", shard, packed_rows, len(out_rows), probs, dups, None, conforming])

    for c in read_manifest_db(source, memo, row_problems, where):
        s = shard_of_id(c.file_id)
        if s != shard:
            if shard is not None:
                yield packed()
            shard, rows = s, []
        rows.append(c)
    if shard is not None:
        yield packed()
    yield msgpack.packb([b"end", [row_problem(p, MANIFEST_DB.record) for p in row_problems]])


def memo_of(messages: list[bytes]) -> list[tuple[str, list]]:
    """The old memo the next import would have: each shard's fresh memo (None: none sent), as the cache holds it."""
    got = [msgpack.unpackb(m, strict_map_key=False) for m in messages[:-1]]
    return [(g[1], msgpack.unpackb(g[6])) for g in got if g[6] is not None]


def as_dict(memo: list) -> dict[bytes, list]:
    """A shard memo (MEMO_FORMAT 3: keys, values one after the other, their ends) as {key: value}."""
    keys, values, raw_ends = memo
    ends = array("I", raw_ends)
    assert len(keys) == 16 * len(ends) and (not ends or ends[-1] == len(values))
    starts = [0, *ends[:-1]]
    got = {
        keys[16 * i : 16 * i + 16]: msgpack.unpackb(values[a:b])
        for i, (a, b) in enumerate(zip(starts, ends, strict=True))
    }
    assert len(got) == len(ends)  # each key once
    return got


def decoded(path) -> dict[str, dict[bytes, list]]:
    """Each shard's decodable rows: BLAKE3-128 of the archive -> the memo's value, decoded here without a memo."""
    out: dict[str, dict[bytes, list]] = {}
    conn = sqlite3.connect(path)
    for fid, domain, rel, flags, blob in conn.execute("SELECT fileID, domain, relativePath, flags, file FROM Files"):
        try:
            c, mbfile = _decode(fid, domain, rel, flags, blob)
        except ValueError:
            continue
        fallback = mbfile["RelativePath"] if isinstance(mbfile.get("RelativePath"), str) else ""
        value = [c.size, c.mode, c.mtime, c.target, c.protection_class, c.has_encryption_key, fallback]
        out.setdefault(shard_of_id(fid), {})[blake3.blake3(blob).digest()[:16]] = value
    conn.close()
    return out


def memos_are_the_rows(path, messages: list[bytes], old: list[tuple[str, list]]) -> None:
    want, had = decoded(path), {s: as_dict(m) for s, m in old}
    for m in messages[:-1]:
        got = msgpack.unpackb(m, strict_map_key=False)
        assert msgpack.packb(got) == m  # packed by hand as packb would
        shard, memo = got[1], got[6]
        assert (had.get(shard) if memo is None else as_dict(msgpack.unpackb(memo))) == want[shard]


def same_bytes(path) -> None:
    def rows_part(messages: list[bytes]) -> list:
        got = [msgpack.unpackb(m, strict_map_key=False) for m in messages]
        return [g[:6] + g[7:] for g in got]

    new = list(parse_shards(path, iter(()), None, *FUNCS))
    assert rows_part(new) == rows_part(parse_shards_before(path, iter(()), None, *FUNCS))
    memos_are_the_rows(path, new, [])
    memo = memo_of(new)
    again = list(parse_shards(path, iter(memo), None, *FUNCS))
    assert rows_part(again) == rows_part(new)
    assert all(msgpack.unpackb(m)[6] is None for m in again[:-1])  # an unchanged Manifest.db: every old memo kept
    # Half the memo, as after a phone changed: some shards decode again and send a memo, others send None.
    half = memo[::2]
    after = list(parse_shards(path, iter(half), None, *FUNCS))
    assert rows_part(after) == rows_part(new)
    memos_are_the_rows(path, after, half)


@given(rows_st)
@settings(max_examples=60, deadline=None)
def test_messages_are_the_bytes_of_the_whole_shard_construction(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("db") / "Manifest.db"
    write_db(path, rows)
    same_bytes(path)


def test_large_shards_same_bytes(tmp_path):
    """Shards of > 65 535 bytes of rows and > 65 535 bytes of memo (bin 32 and array 16 headers), duplicates in
    them, identical MBFile archives in one shard (one decoded value used twice), undecodable rows between shards."""
    path = tmp_path / "Manifest.db"
    conn = sqlite3.connect(path)
    for statement in MANIFEST_DB_SCHEMA:
        conn.execute(statement.replace("fileID TEXT PRIMARY KEY", "fileID TEXT"))
    rows = []
    for i in range(3000):
        fid = ("ab" if i % 3 else "cd") + f"{i:038x}"
        blob = encode_mbfile({"RelativePath": f"p/{i % 1700}", "Size": i, "Mode": 0o100644, "LastModified": i % 1700})
        rows.append((fid, "HomeDomain", f"path/{i}", 1 if i % 4 else 2, blob))
        if i % 500 == 7:  # the same fileID again, and a row nobody can decode
            rows.append((fid, "AppDomain-x", f"other/{i}", 1, blob))
            rows.append((("ab" if i % 2 else "ce") + f"{i:038x}", "HomeDomain", "bad", 1, b"\x00not an archive"))
    conn.executemany("INSERT INTO Files VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    messages = list(parse_shards(path, iter(()), None, *FUNCS))
    shard = msgpack.unpackb(messages[0], strict_map_key=False)
    assert shard[1] == "ab" and len(shard[2]) > 1 << 16 and len(shard[6]) > 1 << 16 and shard[5]
    same_bytes(path)
