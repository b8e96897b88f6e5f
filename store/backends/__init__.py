"""The backend interface: a flat namespace of immutable, named objects.

Everything above this layer (packs, index, event log, keys) is written in terms of the nine calls of `Backend`, so
a backend for S3-compatible storage only has to provide them. `put_exclusive` is the only synchronisation
primitive the repository uses: it fails with `ObjectExists` when the name is already taken (local: `os.link`; S3: a
conditional PUT with `If-None-Match: *`). There are no locks anywhere, so none can go stale.

Names (`check_name`): "/"-separated components, each non-empty and not starting with "." (a backend's own files,
such as local temp files `.tmp-*`, start with one; "." and ".." would alias or escape), without NUL or backslash.
One spelling, one object: "a//b", "./a" and "a/" are refused rather than read as "a/b" and "a", because an object
store would take them for other keys. A refused name is a bug in the caller, so it raises ValueError. The
repository's names are `config`, `keys/<hex>`, `index/<hex>`, `packs/<hh>/<hex>`, `events/<hex>/<seq>`,
`prune/<time>-<hex>`, `writers/<hex>`; no name is ever both an object and, followed by "/", the prefix of another (a local file
cannot also be a directory). A name that is only such a prefix ("packs") is not an object: `exists` says no, `get`
raises MissingObject, `delete` does nothing.

One optional call, outside the interface: `spool(folder)`, an object written as it grows (`append`, `pread`,
`publish(name)`, `close`; local.FileSpool). A backend that has it gets its data packs that way, so a pack being
filled is not held in memory (store/packs.py); one without it (an object store, a wrapper) gets one `put` per pack.

Wrappers of the same shape add one concern each and wrap any backend: `readonly.ReadOnlyBackend` (the write calls
raise ReadOnlyVault) and `faulty.FaultyBackend` (injected I/O errors, short and corrupted reads, a full disk,
delays), and `retrying.RetryingBackend` (transient failures of an object store tried again with backoff; around
every `s3.S3Backend`). `memory.MemoryBackend` holds objects in a dict, for tests. `open_backend` is the only place that knows
which backends exist. Calls may come from several threads at once (the pack writer puts from its own thread).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from ..errors import UnsupportedBackend


class Backend(Protocol):
    location: str
    # How many packs are worth writing at once (store/blobsink.py): a disk 2, an object store more. Wrappers pass
    # on their inner backend's.
    pack_writes: int

    def get(self, name: str) -> bytes:
        """The whole object; raises MissingObject."""

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (a blob inside a pack); raises MissingObject, also when the range ends past
        the end of the object (the object is not what the index says it is). Negative values raise ValueError."""

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Create or replace atomically. Only used for content-addressed names, so replacing is idempotent."""

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        """Create atomically; raises ObjectExists if the name exists. Durable when it returns."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every object whose name starts with prefix, in no particular order. The prefix is ""
        or a valid name, optionally followed by "/" ("packs/", but also "prune/0000"); "../" raises ValueError.
        Only valid names are listed: what else a disk holds there (temp files, a .DS_Store) is not an object."""

    def delete(self, name: str) -> None:
        """Remove; a missing name is not an error (prune may race with itself)."""

    def exists(self, name: str) -> bool: ...

    def free_space(self) -> int | None:
        """Bytes that can still be written, or None if the backend cannot tell (an object store: no limit)."""

    def close(self) -> None:
        """Release what the backend holds open (file descriptors, connections)."""


def check_name(name: str) -> str:
    """`name` if it is a valid object name (see the module docstring), else ValueError."""
    if not name or "\0" in name or "\\" in name or any(not c or c.startswith(".") for c in name.split("/")):
        raise ValueError(f"invalid object name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """`prefix` if `list` accepts it: "" or a valid name, optionally followed by one "/"; else ValueError."""
    if prefix:
        try:
            check_name(prefix.removesuffix("/"))
        except ValueError:
            raise ValueError(f"invalid prefix {prefix!r}") from None
    return prefix


# A scheme has two letters or more, so that a Windows drive ("C:\\vault") stays a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def open_backend(location: str, *, create: bool = False) -> Backend:
    """The backend a vault location names: a path or `file:PATH` (a local directory, created on first write),
    `memory:` (a new empty in-memory store, private to this handle: for tests), `s3:http(s)://HOST/BUCKET/PREFIX`
    (S3-compatible object storage, behind a RetryingBackend; `create`: a missing bucket is created, for init)."""
    if not location:
        raise UnsupportedBackend(repr(location), "an empty location names no vault")
    scheme = m.group(1).lower() if (m := _SCHEME.match(location)) else None
    # Backends are imported here, not at the top: the one in use is the only one whose dependencies load.
    if scheme is None or scheme == "file":
        from .local import LocalBackend

        path = location if scheme is None else location[len("file:") :]
        if scheme == "file" and path.startswith("//"):
            host, _, path = path[2:].partition("/")
            if host not in ("", "localhost"):
                raise UnsupportedBackend(location, f"file: URLs on another host ({host}) are not supported")
            path = "/" + unquote(path)  # a URL: %20 is a space
        if not path:
            raise UnsupportedBackend(location, "file: needs a path")
        return LocalBackend(Path(path))
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend()
    if scheme == "s3":
        from .retrying import RetryingBackend
        from .s3 import S3Backend

        return RetryingBackend(S3Backend(location, create_bucket=create))
    raise UnsupportedBackend(
        location, f"unknown storage scheme {scheme}: (a local folder whose name has a colon: write ./{location})"
    )
