"""The import compares its folder with each catalog shard's file rows read from its packed rows (sync/catalogshards.py
`CatalogShard.file_rows`, sync/layouts.py `compare_files`): the same problems, in the same order, as the comparison
with a dict of sizes and a set of keyed files it replaced, duplicates (neighbours) included; and a shard unpacked keeps
its rows, memo and problems as they were packed."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.catalogshards import CatalogShard, unpack_shard
from phonevault.sync.layouts import LAYOUTS

fids = st.sampled_from(["00aa", "00ab", "01cd", "0f", "ff9", "ff90", "Info.plist"])
files_st = st.lists(st.tuples(fids, st.integers(0, 40), st.booleans()), max_size=12).map(
    lambda rows: sorted(rows, key=lambda r: r[0])  # in fileID order, as a shard's rows are: duplicates neighbours
)


@given(files_st, st.dictionaries(st.sampled_from(["00/00aa", "00aa", "01/01cd", "ff9", "x.mdinfo", "0f.mddata",
                                                  "0f.mdinfo", "ff90.mddata", "Info.plist"]), st.integers(0, 48)),
       st.sampled_from(sorted(LAYOUTS)))  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_compare_files_is_compare_over_a_dict_and_a_set(files, present, layout):
    sizes = {f: s for f, s, _k in files}
    keyed = frozenset(f for f, _s, k in files if k)
    layout = LAYOUTS[layout]
    assert layout.compare_files(present, [list(r) for r in files]) == layout.compare(present, sizes, keyed)


@given(st.lists(st.tuples(fids, st.sampled_from([1, 1, 2, 4]), st.integers(0, 40), st.booleans()), max_size=12),
       st.lists(st.tuples(st.text(max_size=3), st.text(max_size=5)).map(list), max_size=3),
       st.none() | st.binary(max_size=70000), st.booleans())  # fmt: skip
@settings(max_examples=100, deadline=None)
def test_unpacked_shard_is_what_was_packed(listed, probs, memo, conforming):
    # catalog._row packs: [file_id, domain, path, flags, size, mode, mtime, target, protection class, has key]
    rows = msgpack.packb([[f, "D", "p", flags, s, 0o100644, 7, None, 3, k] for f, flags, s, k in listed])
    message = msgpack.packb([b"shard", "0a", rows, len(listed), probs, probs[:1], memo, conforming])
    got = unpack_shard(message)
    assert isinstance(got, CatalogShard)
    fields = (got.shard, got.rows, got.count, got.row_problems, got.dup_problems, got.memo, got.conforming)
    assert fields == ("0a", rows, len(listed), probs, probs[:1], memo, conforming)
    files = [(f, s, k) for f, flags, s, k in listed if flags == 1]  # the file rows (flags 1), in their order
    assert list(got.file_rows()) == files
    assert unpack_shard(msgpack.packb([b"end", probs])) == probs
