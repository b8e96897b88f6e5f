"""The walk's listing of one top-level folder (a scandir and an lstat a file) against the oracle of one os.walk of the
whole folder (tests/sync/test_folderwalk_shards.py), on folders holding every kind of entry an import may meet:
nested and empty subfolders, links to folders, to files and to nothing, a FIFO, names that sort between a folder's
name and its files' (`a`, `a-b`, `a.txt`), and a name that is not UTF-8. And the reader process of small files,
started only when a file is to be read."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.folderwalk import Stat, walk
from phonevault.sync.smallreads import ReaderProcess

from .test_folderwalk_shards import _one_walk

_NAMES = ["a", "a-b", "a.txt", "b", "Z", "\udcff-raw"]  # the last is the byte 0xff (os.fsdecode's surrogate)
_KINDS = ["file", "dir", "empty", "link-dir", "link-file", "link-none", "fifo"]

_entries = st.recursive(
    st.dictionaries(st.sampled_from(_NAMES), st.sampled_from(_KINDS), max_size=4),
    lambda kids: st.dictionaries(st.sampled_from(_NAMES), st.one_of(st.sampled_from(_KINDS), kids), max_size=4),
    max_leaves=12,
)


def _make(root: Path, here: Path, entries: dict) -> None:
    here.mkdir(parents=True, exist_ok=True)
    for name, kind in entries.items():
        p = os.path.join(os.fsencode(here), os.fsencode(name))
        if isinstance(kind, dict):
            _make(root, Path(os.fsdecode(p)), kind)
        elif kind == "file":
            with open(p, "wb") as f:
                f.write(b"x" * len(name))
        elif kind in ("dir", "empty"):
            os.mkdir(p)
            if kind == "dir":
                with open(os.path.join(p, b"inside"), "wb") as f:
                    f.write(b"y")
        elif kind == "link-dir":
            os.symlink(root, p)
        elif kind == "link-file":
            os.symlink(os.path.join(root, "Manifest.db"), p)
        elif kind == "link-none":
            os.symlink(os.path.join(root, "nowhere"), p)
        else:
            os.mkfifo(p)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["00", "0a", "ff", "zz"]), _entries, max_size=4))
def test_every_kind_of_entry_is_listed_as_one_os_walk_lists_it(tmp_path_factory, shards):
    root = tmp_path_factory.mktemp("kinds")
    (root / "Manifest.db").write_bytes(b"m")
    for shard, entries in shards.items():
        _make(root, root / shard, entries)
    assert list(walk(root)) == _one_walk(root)


def test_stat_keeps_the_five_fields_by_name(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    st_ = os.lstat(p)
    got = Stat.of(st_)
    assert (got.st_size, got.st_mode, got.st_mtime_ns, got.st_ino, got.st_ctime_ns) == (
        3,
        st_.st_mode,
        st_.st_mtime_ns,
        st_.st_ino,
        st_.st_ctime_ns,
    )


def test_the_reader_process_starts_with_the_first_batch(tmp_path):
    """An import that reads no small file (an unchanged re-import) starts no child; the first batch starts it."""
    p = tmp_path / "f"
    p.write_bytes(b"small")
    with ReaderProcess() as reader:
        assert reader._proc is None
        ticket = reader.submit([(str(p), 5)])
        assert reader._proc is not None
        assert reader.result(ticket) == [b"small"]
