"""store/trees.py's one-file `lookup` (a shard node's rows bisected by path) answers what the whole tree does, and
FileEntry's encode/decode are inverses (the five-item form and the one with a cipher_key)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.errors import CorruptObject
from phonevault.store.trees import TREE_FORMAT, FileEntry, ShardRef, encode_root, load_tree, lookup, write_tree

segment = st.sampled_from(["ab", "cd", "00", "Manifest.db", "x", "a b", "é"])
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
entries = st.builds(
    FileEntry,
    path=paths,
    size=st.integers(0, 2**40),
    mode=st.sampled_from([0o100644, 0o040755]),
    mtime_ns=st.integers(0, 2**62),
    chunks=st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple),
    cipher_key=st.sampled_from([b"", bytes(range(32))]),
)


def store() -> tuple[dict[bytes, bytes], Callable[[bytes], bytes]]:
    blobs: dict[bytes, bytes] = {}

    def put(data: bytes) -> bytes:
        blob_id = hashlib.sha256(data).digest()
        blobs[blob_id] = data
        return blob_id

    return blobs, put


@given(st.lists(entries, max_size=40), st.lists(paths, max_size=10))
@settings(max_examples=150)
def test_lookup_finds_what_the_whole_tree_holds(files, asked):
    blobs, put = store()
    state = {e.path: e for e in files}
    root = write_tree(state, put)
    whole = load_tree(root, blobs.__getitem__)
    assert whole == state
    for path in [*state, *asked]:
        assert lookup(root, path, blobs.__getitem__) == state.get(path)


@given(entries)
def test_an_entry_decodes_to_itself(entry):
    assert FileEntry.decode(entry.encode()) == entry
    assert FileEntry.decode(msgpack.unpackb(msgpack.packb(entry.encode()))) == entry


def test_a_malformed_row_is_a_corrupt_node_not_a_crash():
    blobs, put = store()
    node = put(msgpack.packb([TREE_FORMAT, "shard", [["ab/1", 1, 0o100644, 0, []], ["ab/2", "size?"]]]))
    root = put(encode_root([ShardRef("ab", node, 2, 1)]))
    with pytest.raises(CorruptObject):
        lookup(root, "ab/2", blobs.__getitem__)
    assert lookup(root, "ab/1", blobs.__getitem__) == FileEntry("ab/1", 1, 0o100644, 0)
