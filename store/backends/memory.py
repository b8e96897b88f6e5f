"""In-memory backend: the objects live in a dict, for fast tests and the fault-injection harness.

Same contract as the local backend (names, errors, short reads), so a test that passes here means the same thing
there. One lock guards the dict: `put_exclusive` checks and inserts under it, so exactly one of several racing
writers wins. Data is copied in on put (callers pass memoryviews of buffers they reuse) and handed out as immutable
bytes. Memory: every object, whole; nothing is ever spilled. Not shared across processes, and not reopenable by its
location: share the object itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..errors import MissingObject, ObjectExists
from . import check_name, check_prefix


class MemoryBackend:
    pack_writes = 2  # as a disk: the tests exercise several packs in flight

    def __init__(self) -> None:
        self.location = "memory:"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes:
        check_name(name)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise MissingObject(name)
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range of {name!r}: offset {offset}, length {length}")
        data = self.get(name)[offset : offset + length]
        if len(data) != length:
            raise MissingObject(name, f"short read: {len(data)} of {length} bytes at offset {offset}")
        return data

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        data = bytes(data)
        with self._lock:
            self._objects[name] = data

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        data = bytes(data)
        with self._lock:
            if name in self._objects:
                raise ObjectExists(name)
            self._objects[name] = data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        with self._lock:  # a snapshot: callers may put and delete while they iterate
            found = [(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)]
        return iter(found)

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            self._objects.pop(name, None)

    def exists(self, name: str) -> bool:
        check_name(name)
        with self._lock:
            return name in self._objects

    def free_space(self) -> int | None:
        return None

    def close(self) -> None:
        pass
