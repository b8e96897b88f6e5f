"""What an import's plan of a shard holds beside the shard's packed listing (sync/mobilesync.py `_plan`): indices into
the listing, not a tuple with a full path and a stat key per file (~350 bytes a file, twice over while the next
shard is planned as this one is staged: ~2.7 MB at 1 000 000 files, ~3 900 files a shard)."""

from __future__ import annotations

import os
import tracemalloc

from phonevault.sync.folderwalk import Total, walk
from phonevault.sync.mobilesync import _plan, _Staging

FILES = 3000


def test_a_planned_shard_holds_no_path_or_stat_key_per_file(repo, tmp_path):
    folder = tmp_path / "dev"
    (folder / "ab").mkdir(parents=True)
    for i in range(FILES):
        (folder / "ab" / f"{i:040x}").write_bytes(os.urandom(8))
    shard, files, empty_dirs = next(walk(folder, packed=True))
    assert (shard, len(files)) == ("ab", FILES)
    run = _Staging([], None, None, Total(folder))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        plan = _plan(repo, folder, run, shard, files, empty_dirs)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(plan.to_read) == FILES and not plan.cached  # nothing in the stat cache: every file to read
    assert plan.paths[FILES - 1] == str(folder / "ab" / f"{FILES - 1:040x}")
    assert held < 64 * FILES, held  # an index (a list slot and an int) per file, and the cache's empty answers
