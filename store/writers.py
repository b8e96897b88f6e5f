"""writers/<rand>: the marker a running SnapshotWriter keeps in the vault so that a prune knows it is there.

Format (version 1): msgpack [1, started_us, refreshed_us], sealed with the vault's key, ad = the object's name. The
writer puts it when it starts, puts it again every WRITER_REFRESH_S and deletes it when it ends; one not refreshed
for WRITER_STALE_US belongs to a writer that died. What a prune does with them: store/prune.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgpack

from .crypto import MasterKey
from .errors import CorruptObject, MissingObject
from .repository import Repository

WRITER_FORMAT = 1
WRITERS = "writers/"
WRITER_REFRESH_S = 60.0  # how often a running writer refreshes its marker
WRITER_STALE_US = 10 * 60 * 10**6  # a marker not refreshed for this long belongs to a dead writer


@dataclass(frozen=True, slots=True)
class WriterMarker:
    name: str
    started_us: int
    refreshed_us: int


def writer_marker_name() -> str:
    return f"{WRITERS}{os.urandom(16).hex()}"


def seal_writer_marker(key: MasterKey, name: str, started_us: int, refreshed_us: int) -> bytes:
    return key.seal(msgpack.packb([WRITER_FORMAT, started_us, refreshed_us]), name.encode())


def read_writers(repo: Repository) -> tuple[list[WriterMarker], list[str]]:
    """Every writer marker that opens, and the names of those that do not (damaged, or from another format)."""
    markers, unreadable = [], []
    for name, _ in sorted(repo.backend.list(WRITERS)):
        try:
            fmt, started, refreshed = msgpack.unpackb(repo.key.open(repo.backend.get(name), name.encode(), name))
            if fmt != WRITER_FORMAT or not isinstance(started, int) or not isinstance(refreshed, int):
                raise ValueError(f"format {fmt!r}")
            markers.append(WriterMarker(name, started, refreshed))
        except MissingObject:
            continue  # its writer finished while we listed
        except (CorruptObject, ValueError, TypeError, msgpack.UnpackException):
            unreadable.append(name)
    return markers, unreadable
