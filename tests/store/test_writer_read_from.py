"""FileWriter.read_from (read straight into the chunker's buffer) stages exactly what write(f.read(n)) does."""

from __future__ import annotations

import io
import random

import pytest

from phonevault.store.records import DeviceRecord
from phonevault.store.writer import SnapshotWriter


@pytest.mark.parametrize(
    ("head", "size", "limit"),
    [
        (b"\xff\xd8\xff\xe1", 3 << 20, 1 << 20),  # a photo: coarse chunks
        (b"SQLite format 3\x00", 300_000, 4096),  # a database: fine chunks, compressed
        (b"\xff\xd8\xff\xe1", 10, 1 << 20),  # shorter than the sniff sample
        (b"", 0, 1 << 20),  # empty
    ],
)
def test_read_from_stages_what_write_stages(repo, head, size, limit):
    data = (head + random.Random(size).randbytes(size))[:size]
    with SnapshotWriter(repo, "udid-read-from", DeviceRecord(), incremental=False) as w:
        pushed = w.open_file("a")
        f = io.BytesIO(data)
        while block := f.read(limit):
            pushed.write(block)
        by_write = pushed.close()
        read = w.open_file("b")
        f = io.BytesIO(data)
        total = 0
        while n := read.read_from(f, limit):
            total += n
        by_read = read.close()
        assert total == by_read.size == by_write.size == size
        assert by_read.chunks == by_write.chunks
        assert b"".join(w.read_file(by_read)) == data
