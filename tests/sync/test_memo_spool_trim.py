"""The old MBFile memo a Manifest parse starts from is spooled for its child with the cache's map unmapped as it is
read (sync/catalogshards.py `ManifestStream._start_child`): a 1 000 000-file phone's memo (~100 MB of values) mapped
72 MB of data.mdb before one trim at its end, the day-2 import's peak RSS. Real LMDB cache, real Manifest.db, this
process's own /proc/self/smaps (Linux only)."""

from __future__ import annotations

import os
import sys

import msgpack
import pytest

from phonevault.store.residency import TRIM_GROWTH
from phonevault.store.spool import Spool
from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem
from phonevault.sync.catalogshards import ManifestStream, MemoWriter
from phonevault.sync.manifest import CatalogEntry, file_id, write_manifest_db

from ..store.test_spilled_trim import mapped

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="resident pages are read from /proc/self/smaps")


def test_the_old_memo_is_spooled_with_the_map_trimmed(repo, tmp_path, monkeypatch) -> None:
    device = repo.device_key("00008030-00000000000000C4")
    memo = MemoWriter(repo, device)
    for i in range(64):  # 64 shards of ~330 KB: ~21 MB of memo in the cache
        memo.add(
            f"{i:02x}", msgpack.packb({os.urandom(16): [i, 0o644, 0, None, 3, False, "x" * 200] for _ in range(1200)})
        )
    memo.finish()
    mdb = (repo.cache.path / "data.mdb").resolve()
    repo.cache.trim()
    seen: list[int] = []
    append = Spool.append

    def watched(self, item) -> None:
        append(self, item)
        seen.append(mapped(mdb))

    monkeypatch.setattr(Spool, "append", watched)
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, [CatalogEntry(file_id("HomeDomain", "a"), "HomeDomain", "a", 1, 3, 0o100644, 0)])
    stream = ManifestStream(repo, device, db, (_row, _row_problem, _duplicate_problems))
    try:
        assert len(seen) == 64, "the memo was not spooled: the test would show nothing"
        assert max(seen) < TRIM_GROWTH + (2 << 20)  # ~21 MB before
        assert list(stream.upto(None))[0].count == 1
    finally:
        stream.close()
