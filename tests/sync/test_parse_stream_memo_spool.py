"""The old MBFile memo goes to the Manifest parse child as the cache holds it, packed (sync/catalogshards.py
`ManifestStream._spool_old_memo`): the import neither unpacks nor packs it again, and holds none of it when it forks
the child, which would keep whatever the import held then to its end (a 1 000 000-file day-2 import's child held the
last shard's ~1.5 MB of memo objects so). Real LMDB cache, real Manifest.db, a real forked child; tracemalloc."""

from __future__ import annotations

import itertools
import multiprocessing.process
import os
import tracemalloc
from array import array

import msgpack

from phonevault.store.spool import Spool
from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem
from phonevault.sync.catalogshards import ManifestStream, MemoWriter
from phonevault.sync.manifest import CatalogEntry, file_id, write_manifest_db
from phonevault.sync.mbfilememo import MEMO_FORMAT

FUNCS = (_row, _row_problem, _duplicate_problems)


def test_the_old_memo_is_spooled_packed_and_not_held_at_the_fork(repo, tmp_path, monkeypatch) -> None:
    device = repo.device_key("00008030-00000000000000C4")
    db = tmp_path / "Manifest.db"
    entries = [
        CatalogEntry(file_id("HomeDomain", f"f{i}"), "HomeDomain", f"f{i}", 1, i, 0o100644, i) for i in range(40)
    ]
    write_manifest_db(db, entries)
    first = ManifestStream(repo, device, db, FUNCS)  # its memo: what the rows decoded, one value a row
    want = [(s.shard, s.rows) for s in first.upto(None)]
    first.close()
    memo = MemoWriter(repo, device)
    for i in range(16):  # and 16 shards of 8 000 more: ~0.5 MB each, packed (MEMO_FORMAT 3)
        values = [
            msgpack.packb([j, 0o100644, j, None, 3, False, f"Media/DCIM/100APPLE/IMG_{j:05d}.HEIC"])
            for j in range(8000)
        ]
        ends = array("I", itertools.accumulate(len(v) for v in values))
        memo.add(f"z{i:x}", msgpack.packb([os.urandom(16 * 8000), b"".join(values), ends.tobytes()]))
    memo.finish()
    in_cache = dict(
        (s, repo.cache.derived_get(b"mbfile-memo/%d/%s/%s" % (MEMO_FORMAT, device.encode(), s.encode())))
        for s in memo.shards
    )
    spooled: list[tuple[str, bool]] = []  # each shard, and whether it went as the cache's bytes (none kept here)
    append = Spool.append
    monkeypatch.setattr(
        Spool,
        "append",
        lambda self, item: (spooled.append((item[0], item[1] == in_cache[item[0]])), append(self, item))[1],
    )
    at_fork: list[int] = []
    start = multiprocessing.process.BaseProcess.start
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess,
        "start",
        lambda self: (at_fork.append(tracemalloc.get_traced_memory()[0]), start(self))[1],
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stream = ManifestStream(repo, device, db, FUNCS)
    finally:
        tracemalloc.stop()
    try:
        assert [s for s, _same in spooled] == memo.shards
        assert all(same for _s, same in spooled)  # the cache's bytes, not unpacked and packed again
        assert len(at_fork) == 1, "no child was forked: the test would show nothing"
        assert at_fork[0] - before < 256 << 10  # one shard is ~0.5 MB
        # The child unpacks the memo as it parses: the rows it sends are those decoded before.
        assert [(s.shard, s.rows) for s in stream.upto(None)] == want
    finally:
        stream.close()
