"""The backend interface: a flat namespace of immutable, named objects.

Everything above this layer (packs, index, event log, keys) is written in terms of these five calls, so a backend
for S3-compatible storage only has to provide them. `put_exclusive` is the only synchronisation primitive the
repository uses: it fails with `ObjectExists` when the name is already taken (local: `os.link`; S3: a conditional
PUT with `If-None-Match: *`). There are no locks anywhere, so none can go stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class Backend(Protocol):
    location: str

    def get(self, name: str) -> bytes:
        """The whole object; raises MissingObject."""

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (a blob inside a pack); raises MissingObject."""

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Create or replace atomically. Only used for content-addressed names, so replacing is idempotent."""

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        """Create atomically; raises ObjectExists if the name exists. Durable when it returns."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every object whose name starts with prefix, in no particular order."""

    def delete(self, name: str) -> None:
        """Remove; a missing name is not an error (prune may race with itself)."""

    def exists(self, name: str) -> bool: ...

    def close(self) -> None:
        """Release what the backend holds open (file descriptors, connections)."""
