"""Read-only wrapper: any backend, with its write calls refused.

For every command that only reads the vault (ls, diff, snapshots, devices, stats, check, extract, key list,
forget --dry-run), so that a bug in one of them cannot change the vault: put, put_exclusive and delete raise
ReadOnlyVault before reaching the wrapped backend. Reads, `free_space` and `close` pass through unchanged. Holds
nothing of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import ReadOnlyVault
from . import Backend


class ReadOnlyBackend:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location
        self.pack_writes = inner.pack_writes

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def free_space(self) -> int | None:
        return self.inner.free_space()

    def close(self) -> None:
        self.inner.close()

    def put(self, name: str, data: bytes | memoryview) -> None:
        raise ReadOnlyVault(self.location, "write", name)

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        raise ReadOnlyVault(self.location, "create", name)

    def delete(self, name: str) -> None:
        raise ReadOnlyVault(self.location, "delete", name)
