"""A shard node's bytes are its id (store/trees.py): however `encode_shard` and `FileEntry.encode` build them, they
must stay byte for byte what the format says, the chunk ids packed as an array and the entries sorted by path. The
oracle is the encoding as written before (lists everywhere, sorted by a lambda), and one node pinned as bytes."""

from __future__ import annotations

import dataclasses
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.trees import CIPHER_FORMAT, TREE_FORMAT, FileEntry, decode_shard, encode_shard


def _oracle(entries: list[FileEntry]) -> bytes:
    items = []
    for e in sorted(entries, key=lambda e: e.path):
        item = [e.path, e.size, e.mode, e.mtime_ns, list(e.chunks)]
        items.append(item + [e.cipher_key] if e.cipher_key else item)
    fmt = CIPHER_FORMAT if any(len(i) > 5 for i in items) else TREE_FORMAT
    return msgpack.packb([fmt, "shard", items])


_entry = st.builds(
    FileEntry,
    st.text(min_size=1, max_size=12),
    st.integers(0, 2**40),
    st.sampled_from([0o100644, 0o100600, 0o040755, 0o120777]),
    st.integers(0, 2**63 - 1),
    st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple),
    st.one_of(st.just(b""), st.binary(min_size=1, max_size=40)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_entry, max_size=20, unique_by=lambda e: e.path))
def test_a_shard_node_is_the_bytes_the_format_gives(entries):
    data = encode_shard(entries)
    assert data == _oracle(entries)
    assert decode_shard(data) == sorted(entries, key=lambda e: e.path)
    for e in entries:  # a delta's and a spilled tree's items: the same bytes as a list of lists
        listed = [e.path, e.size, e.mode, e.mtime_ns, list(e.chunks)] + ([e.cipher_key] if e.cipher_key else [])
        assert msgpack.packb(e.encode()) == msgpack.packb(listed)
        assert FileEntry.decode(msgpack.unpackb(msgpack.packb(e.encode()))) == e


def test_a_node_pinned_as_bytes():
    entries = [FileEntry("ab/2", 5, 0o100644, 7, (b"\x01" * 32,)), FileEntry("ab/1", 0, 0o100600, 9)]
    assert encode_shard(entries).hex() == (
        "9301a573686172649295a461622f3100cd8180099095a461622f3205cd81a40791c420" + "01" * 32
    )


@settings(max_examples=100, deadline=None)
@given(_entry)
def test_an_entry_is_the_frozen_value_of_its_six_fields(e):
    """FileEntry's own __init__ (slot setters) makes what the dataclass's made: fields by position and by name, the
    defaults, equality and hash by value, replace, pickle, and no assignment afterwards."""
    fields = (e.path, e.size, e.mode, e.mtime_ns, e.chunks, e.cipher_key)
    by_name = FileEntry(
        path=e.path, size=e.size, mode=e.mode, mtime_ns=e.mtime_ns, chunks=e.chunks, cipher_key=e.cipher_key
    )
    assert by_name == FileEntry(*fields) == e and hash(by_name) == hash(e)
    assert tuple(getattr(by_name, f.name) for f in dataclasses.fields(FileEntry)) == fields
    assert FileEntry(e.path, e.size, e.mode, e.mtime_ns) == FileEntry(e.path, e.size, e.mode, e.mtime_ns, (), b"")
    assert dataclasses.replace(e, size=e.size + 1).size == e.size + 1
    assert pickle.loads(pickle.dumps(e)) == e
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.size = 0  # type: ignore[misc]
