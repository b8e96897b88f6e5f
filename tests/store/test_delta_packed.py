"""The delta stream's groups, held packed (store/trees.py `DeltaWriter`), are byte for byte the blobs the encoded
lists made: `msgpack.packb([format, "delta", puts, removes])` per group of DELTA_GROUP changes."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store import trees
from phonevault.store.trees import CIPHER_FORMAT, TREE_FORMAT, Change, DeltaWriter, FileEntry

_ids = st.binary(min_size=32, max_size=32)
_entries = st.builds(
    FileEntry,
    path=st.text(min_size=1, max_size=30),
    size=st.integers(0, 1 << 40),
    mode=st.sampled_from([0o100644, 0o100600, 0o40755]),
    mtime_ns=st.integers(-(1 << 62), 1 << 62),
    chunks=st.lists(_ids, max_size=4).map(tuple),
    cipher_key=st.one_of(st.none(), st.binary(min_size=40, max_size=40)),
)
_changes = st.lists(
    st.one_of(
        _entries.map(lambda e: Change(e.path, "added", None, e)),
        st.text(min_size=1, max_size=30).map(lambda p: Change(p, "removed", FileEntry(p, 0, 0o100644, 0, ()), None)),
    ),
    max_size=40,
)


def _reference(changes: list[Change], group: int) -> list[bytes]:
    """What DeltaWriter wrote before its groups were packed: each group's encoded puts and removes, packed whole."""
    out, puts, removes = [], [], []
    for c in changes:
        if c.new is None:
            removes.append(c.path)
        else:
            puts.append(c.new.encode())
        if len(puts) + len(removes) >= group:
            fmt = CIPHER_FORMAT if any(len(i) > 5 for i in puts) else TREE_FORMAT
            out.append(msgpack.packb([fmt, "delta", puts, removes]))
            puts, removes = [], []
    if puts or removes or not out:
        fmt = CIPHER_FORMAT if any(len(i) > 5 for i in puts) else TREE_FORMAT
        out.append(msgpack.packb([fmt, "delta", puts, removes]))
    return out


@settings(max_examples=200, deadline=None)
@given(_changes, st.integers(1, 8))
def test_packed_groups_are_the_blobs_the_lists_made(changes, group):
    blobs: list[bytes] = []
    old, trees.DELTA_GROUP = trees.DELTA_GROUP, group
    try:
        w = DeltaWriter(lambda data: blobs.append(data) or len(blobs).to_bytes(4, "big"))
        for c in changes:
            w.add(c)
        ids = w.finish()
    finally:
        trees.DELTA_GROUP = old
    assert blobs == _reference(changes, group)
    assert ids == tuple(n.to_bytes(4, "big") for n in range(1, len(blobs) + 1))
