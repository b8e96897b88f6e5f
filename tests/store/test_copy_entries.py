"""`copy` restages each file's entry with the target's chunk ids (store/copy.py `_with_chunks`): it must be
`dataclasses.replace(entry, chunks=...)` exactly, whatever the entry, and know every field FileEntry has (a field
added to FileEntry and not copied there would be dropped by every copy)."""

from __future__ import annotations

from dataclasses import fields, replace

from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.copy import _with_chunks
from phonevault.store.trees import FileEntry

ids = st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple)
entries = st.builds(
    FileEntry,
    path=st.text(min_size=1, max_size=40),
    size=st.integers(0, 1 << 40),
    mode=st.integers(0, 0o177777),
    mtime_ns=st.integers(-(1 << 62), 1 << 62),
    chunks=ids,
    cipher_key=st.binary(max_size=40),
)


def test_every_field_of_a_file_entry_is_known_to_the_copy() -> None:
    assert [f.name for f in fields(FileEntry)] == ["path", "size", "mode", "mtime_ns", "chunks", "cipher_key"]


@given(entry=entries, chunks=ids)
def test_an_entry_with_new_chunks_is_replace(entry: FileEntry, chunks: tuple[bytes, ...]) -> None:
    assert _with_chunks(entry, chunks) == replace(entry, chunks=chunks)
