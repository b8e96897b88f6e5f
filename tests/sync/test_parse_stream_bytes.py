"""`parse_shards` packs each row as it is read (sync/catalogshards.py `_ShardPacker`): its messages are the very bytes
the construction it replaced gave (every shard's rows as CatalogEntry objects, then lists packed at once), over
generated Manifest.dbs (real SQLite files), a fresh parse and one with the first parse's memo, and shards large enough
for msgpack's 16- and 32-bit headers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import msgpack
from hypothesis import given, settings

from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem
from phonevault.sync.catalogshards import _WindowMemo, conforms, parse_shards, shard_of_id
from phonevault.sync.layouts import MANIFEST_DB
from phonevault.sync.manifest import MANIFEST_DB_SCHEMA, CatalogEntry, RowProblem, read_manifest_db
from phonevault.sync.mbfile import encode_mbfile
from tests.sync.test_scale_catalog import rows_st, write_db

FUNCS = (_row, _row_problem, _duplicate_problems)


def parse_shards_before(source, old, where, pack_row, row_problem, duplicates) -> Iterator[bytes]:
    """`parse_shards` as it was at ebca90b, less the file sizes it sent beside the rows (the rows hold them): a
    shard's rows held, then packed at once (the oracle)."""
    memo = _WindowMemo(old)
    row_problems: list[RowProblem] = []
    shard: str | None = None
    rows: list[CatalogEntry] = []
    fresh: dict[bytes, list] = {}

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
        same = fresh == memo.old(shard)
        packed_rows = msgpack.packb(out_rows)
        memo_out = None if same else msgpack.packb(fresh)
        return msgpack.packb([b"shard", shard, packed_rows, len(out_rows), probs, dups, memo_out, conforming])

    for c in read_manifest_db(source, memo, row_problems, where):
        s = shard_of_id(c.file_id)
        if s != shard:
            if shard is not None:
                yield packed()
            shard, rows, fresh = s, [], {}
            memo.at(s)
        rows.append(c)
        fresh.update(memo.fresh)
        memo.fresh.clear()
    if shard is not None:
        yield packed()
    yield msgpack.packb([b"end", [row_problem(p, MANIFEST_DB.record) for p in row_problems]])


def memo_of(messages: list[bytes]) -> list[tuple[str, dict]]:
    """The old memo the next import would have: each shard's fresh memo (None: none sent)."""
    got = [msgpack.unpackb(m, strict_map_key=False) for m in messages[:-1]]
    return [(g[1], msgpack.unpackb(g[6], strict_map_key=False)) for g in got if g[6] is not None]


def same_bytes(path) -> None:
    new = list(parse_shards(path, iter(()), None, *FUNCS))
    assert new == list(parse_shards_before(path, iter(()), None, *FUNCS))
    memo = memo_of(new)
    again = list(parse_shards(path, iter(memo), None, *FUNCS))
    assert again == list(parse_shards_before(path, iter(memo), None, *FUNCS))
    # Half the memo, as after a phone changed: some shards decode again and send a memo, others send None.
    half = memo[::2]
    after = list(parse_shards(path, iter(half), None, *FUNCS))
    assert after == list(parse_shards_before(path, iter(half), None, *FUNCS))


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
