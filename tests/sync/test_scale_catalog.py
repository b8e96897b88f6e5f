"""The catalog a shard at a time (sync/catalogshards.py) against the whole-table read it replaced: the same rows in
the same order, the same problems, the same sizes; through the forked child, the in-process parse, a warm memo, the
cache, and an import's comparison with its folder. Real SQLite files, real LMDB, real imports."""

from __future__ import annotations

import os
import plistlib
import sqlite3
from pathlib import Path

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.catalog import (
    _duplicate_problems,
    _pack,
    _row,
    _row_problem,
    load_catalog,
    manifest_stream,
)
from phonevault.sync.catalogcache import FolderCompare
from phonevault.sync.catalogshards import CatalogShard, old_memo, parse_shards, unpack_shard
from phonevault.sync.extract import _named_files, _select_all
from phonevault.sync.layouts import MANIFEST_DB
from phonevault.sync.manifest import MANIFEST_DB_SCHEMA, CatalogEntry, RowProblem, file_id, read_manifest_db
from phonevault.sync.mbfile import encode_mbfile
from phonevault.sync.mobilesync import import_folder
from tests.conftest import reopen

UDID = "00008030-00000000000000C4"
FUNCS = (_row, _row_problem, _duplicate_problems)

# A row: (fileID kind, domain, path, flags, size, damaged MBFile). Kinds: a phone's SHA-1 name, a name sharing the
# previous row's fileID (a duplicate), or an odd one (short, upper case, not hex).
rows_st = st.lists(
    st.tuples(
        st.sampled_from(["sha1", "sha1", "sha1", "dup", "odd"]),
        st.sampled_from(["HomeDomain", "CameraRollDomain", "AppDomain-x"]),
        st.text("abcé/._", min_size=1, max_size=8),
        st.sampled_from([1, 1, 1, 2, 4]),
        st.integers(0, 5000),
        st.booleans(),
    ),
    max_size=60,
)


def write_db(path: Path, rows) -> list[CatalogEntry]:
    """A Manifest.db in Apple's schema but without the primary key (a hostile one may list a fileID twice)."""
    conn = sqlite3.connect(path)
    for statement in MANIFEST_DB_SCHEMA:
        conn.execute(statement.replace("fileID TEXT PRIMARY KEY", "fileID TEXT"))
    written, last = [], None
    for i, (kind, domain, rel, flags, size, damaged) in enumerate(rows):
        if kind == "dup" and last is not None:
            fid = last
        elif kind == "odd":
            fid = ["a", "Z9", "zz-odd", "0", "ab"][i % 5] + str(i)
        else:
            fid = file_id(domain, rel)
        last = fid
        blob = b"\x00not an archive" if damaged and i % 3 == 0 else encode_mbfile(
            {"RelativePath": rel, "Size": size, "Mode": 0o100644, "LastModified": 1_600_000_000 + i, "Flags": 0}
        )  # fmt: skip
        conn.execute("INSERT INTO Files VALUES (?, ?, ?, ?, ?)", (fid, domain, rel, flags, blob))
        written.append(CatalogEntry(fid, domain, rel, flags, size, 0o100644, 0))
    conn.commit()
    conn.close()
    return written


def whole(path: Path):
    """What the old whole-table read made of it: rows, problems, file sizes, keyed."""
    problems: list[RowProblem] = []
    parsed = _pack(read_manifest_db(path, None, problems), problems, MANIFEST_DB.record)
    rows, probs = msgpack.unpackb(parsed.packed)
    return rows, probs, parsed.file_sizes, set(parsed.keyed)


def streamed(messages) -> tuple[list, list, dict, set, list[CatalogShard]]:
    rows, rowprobs, dups, sizes, keyed, shards = [], [], [], {}, set(), []
    for m in messages:
        got = unpack_shard(m)
        if isinstance(got, list):
            rowprobs += got
            break
        shards.append(got)
        shard_rows = msgpack.unpackb(got.rows)  # sent packed: the cache's value as is
        assert got.count == len(shard_rows)
        rows += shard_rows
        rowprobs += got.row_problems
        dups += got.dup_problems
        for f, s, k in got.file_rows():  # duplicates: the last size, keyed if any is (as the whole read's dict, set)
            sizes[f] = s
            keyed |= {f} if k else set()
    return rows, rowprobs + dups, sizes, keyed, shards


@given(rows_st)
@settings(max_examples=40)
def test_streamed_shards_are_the_whole_read(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("db") / "Manifest.db"
    write_db(path, rows)
    rows_w, probs_w, sizes_w, keyed_w = whole(path)
    rows_s, probs_s, sizes_s, keyed_s, shards = streamed(parse_shards(path, iter(()), None, *FUNCS))
    assert rows_s == rows_w
    assert probs_s == probs_w
    assert sizes_s == sizes_w and list(sizes_s) == list(sizes_w)
    assert keyed_s == keyed_w
    assert [s.shard for s in shards] == sorted({s.shard for s in shards})  # each shard once, in order
    assert all(r[0][:2] == s.shard for s in shards for r in msgpack.unpackb(s.rows))
    # A second parse with the first one's memo (what every later import has) reads the same rows.
    memo = [(s.shard, msgpack.unpackb(s.memo, strict_map_key=False)) for s in shards]
    assert streamed(parse_shards(path, iter(memo), None, *FUNCS))[:4] == (rows_w, probs_w, sizes_w, keyed_w)


def test_child_stream_and_cache_give_the_whole_read(repo, tmp_path):
    """The forked child's shards, the memo it leaves, and the catalog read back from the cache after an import."""
    dev = tmp_path / UDID
    dev.mkdir()
    rows = [("sha1", "HomeDomain", f"d/f{i}", 1, 10 + i, False) for i in range(700)]
    rows += [("dup", "HomeDomain", "again", 1, 3, False), ("odd", "HomeDomain", "x", 1, 1, False)]
    rows += [("sha1", "HomeDomain", "bad", 1, 5, True)] * 3
    entries = write_db(dev / "Manifest.db", rows)
    for c in entries:
        if c.flags == 1 and c.size < 600:  # some listed files are missing, one has another size
            (dev / c.file_id[:2]).mkdir(exist_ok=True)
            (dev / c.file_id[:2] / c.file_id).write_bytes(os.urandom(c.size + (c.size == 20)))
    (dev / "Info.plist").write_bytes(plistlib.dumps({"Target Identifier": UDID, "Device Name": "S"}))
    rows_w, probs_w, sizes_w, keyed_w = whole(dev / "Manifest.db")

    stream = manifest_stream(repo, repo.device_key(UDID), dev / "Manifest.db")
    with repo.cache.spool() as listed:
        compare = FolderCompare(stream, listed, str(dev))
        compare.shard("zz")  # everything up to "zz" at once: nothing is in the folder for them
        compare.finish()
        spooled = list(listed)
        got = [r for _s, shard_rows, _n in spooled for r in msgpack.unpackb(shard_rows)]
        assert [n for _s, _r, n in spooled] == [len(msgpack.unpackb(r)) for _s, r, _n in spooled]
    stream.close()
    assert got == rows_w
    assert [p for _p, p in stream.problems] == [m for _p, m in probs_w]
    assert len(list(old_memo(repo, repo.device_key(UDID)))) > 1  # one memo per shard, read back

    r = import_folder(repo, dev)
    catalog = load_catalog(repo, r.snapshot)
    assert [_row(c) for c in catalog] == rows_w
    assert len(catalog) == len(rows_w)
    assert [(p.path, p.message) for p in catalog.problems] == [tuple(p) for p in probs_w]
    # The folder compared with the whole list at once, as before: the same lines, in the same order.
    present = {str(p.relative_to(dev)): p.stat().st_size for p in dev.rglob("*") if p.is_file()}
    expected = MANIFEST_DB.compare(present, sizes_w, keyed_w)
    assert any("missing from the folder" in p for p in expected) and any("truncated" in p for p in expected)
    assert [p for p in r.problems if p in expected] == expected
    at = r.problems.index(probs_w[0][1])  # the catalog's own problems, then the comparison's, as before
    assert r.problems[at : at + len(probs_w) + len(expected)] == [m for _p, m in probs_w] + expected
    # The catalog parsed again from the vault into an empty cache is the same, a shard at a time.
    fresh = reopen(repo, tmp_path / "another-cache")
    try:
        again = load_catalog(fresh, fresh.snapshot_record(r.snapshot.device_key, r.snapshot.id))
        assert [_row(c) for c in again] == rows_w
        assert [(p.path, p.message) for p in again.problems] == [tuple(p) for p in probs_w]
    finally:
        fresh.close()


@given(st.lists(st.sampled_from(["f1", "f2", "d", "d/f3", "d/e/f4", "missing", "f1/no"]), min_size=1, max_size=3))
@settings(max_examples=25)
def test_naming_files_reads_their_shards_and_chooses_what_the_whole_catalog_does(make_repo, tmp_path_factory, names):
    """Files named in a catalog of phone-named rows are found by their fileID's shard (`_named_files`), and exactly
    as a pass over the whole catalog chooses them; a folder or a name no row has falls back to that pass."""
    repo = make_repo(f"v{os.urandom(4).hex()}")
    dev = tmp_path_factory.mktemp("src") / UDID
    dev.mkdir()
    rows = [("sha1", "HomeDomain", n, 1, 10, False) for n in ("f1", "f2", "d/f3", "d/e/f4")]
    rows += [("sha1", "HomeDomain", n, 2, 0, False) for n in ("d", "d/e")]
    write_db(dev / "Manifest.db", rows)
    (dev / "Info.plist").write_bytes(plistlib.dumps({"Target Identifier": UDID, "Device Name": "S"}))
    catalog = load_catalog(repo, import_folder(repo, dev).snapshot)
    paths = [f"HomeDomain/{n}" for n in names]
    fast = _named_files(catalog, paths)
    whole = _select_all(catalog, paths)
    assert fast is None or fast == whole
    files = {"f1", "f2", "d/f3", "d/e/f4"}
    assert (fast is not None) == all(n in files for n in names)
