"""A parsed catalog in the cache, read back one shard at a time, and an import's folder compared with its catalog
shard by shard (the rows come from sync/catalogshards.py's parse or from this cache).

Cache (CATALOG_SHARDS_FORMAT 3): `<prefix><listing id>` -> msgpack [[[shard, rows], …], problems, conforming],
and `<prefix><listing id>/<shard>` -> the shard's msgpack rows; the head is written last, so a head found means
every shard was written (a shard missing after all is CacheCorrupt: the cache changed while it was read).
`conforming`: every row's fileID is the SHA-1 of its domain path (as a phone names files), so the row of one domain
path can only be in the shard of that hash (`find_row`: one shard read, not the catalog).

Memory: one shard's rows (CatalogEntry objects, or a CatalogShard) and the problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msgpack

from phonevault.store.errors import CacheCorrupt
from phonevault.store.repository import Repository
from phonevault.store.spool import Spool

from .catalogshards import CatalogShard, ManifestStream, ShardStream, shard_of_id
from .errors import BackupFolderInvalid, ManifestInvalid
from .layouts import MANIFEST_DB
from .manifest import CatalogEntry

CATALOG_SHARDS_FORMAT = 3


def write_cached(
    repo: Repository, key: bytes, shards: Iterable[tuple[str, bytes, int]], head: Callable[[], tuple]
) -> None:
    """A catalog into the cache under `key` (format in the module docstring): every shard (its name, its rows
    packed, their number), then the head, whose problems and conformance `head()` gives once the shards are written."""
    counts = []

    def values() -> Iterator[tuple[bytes, bytes]]:
        for shard, rows, count in shards:
            counts.append([shard, count])
            yield key + b"/" + shard.encode(errors="surrogatepass"), rows

    repo.cache.derived_put_many(values())
    problems, ok = head()
    repo.cache.derived_put(key, msgpack.packb([counts, problems, ok]))


@dataclass(frozen=True, slots=True)
class CachedHead:
    key: bytes
    counts: tuple[tuple[str, int], ...]
    problems: tuple[tuple[str, str], ...]
    conforming: bool


def read_head(repo: Repository, key: bytes) -> CachedHead | None:
    raw = repo.cache.derived_get(key)
    if raw is None:
        return None
    counts, problems, ok = msgpack.unpackb(raw)
    return CachedHead(key, tuple((s, n) for s, n in counts), tuple((p, m) for p, m in problems), bool(ok))


def read_shard(repo: Repository, head: CachedHead, shard: str) -> list[CatalogEntry] | None:
    """A cached shard's rows; None if it is not there (the cache was found damaged and rebuilt meanwhile)."""
    raw = repo.cache.derived_get(head.key + b"/" + shard.encode(errors="surrogatepass"))
    return None if raw is None else [CatalogEntry(*r) for r in msgpack.unpackb(raw)]


class CachedRows:
    """A cached catalog's rows, read back one shard at a time each time they are iterated (in fileID order). A shard
    gone from the cache (damage found, the cache rebuilt empty) is parsed again from the vault (`rebuild`)."""

    __slots__ = ("_repo", "_rebuild", "head")

    def __init__(self, repo: Repository, head: CachedHead, rebuild: Callable[[], CachedHead]) -> None:
        self._repo, self.head, self._rebuild = repo, head, rebuild

    def _shard(self, shard: str) -> list[CatalogEntry]:
        rows = read_shard(self._repo, self.head, shard)
        if rows is None:
            self.head = self._rebuild()
            rows = read_shard(self._repo, self.head, shard)
        if rows is None:
            raise CacheCorrupt(str(self._repo.cache.path), f"catalog shard {shard!r} is missing once parsed again")
        return rows

    def __iter__(self) -> Iterator[CatalogEntry]:
        for shard, _n in self.head.counts:
            yield from self._shard(shard)

    def __len__(self) -> int:
        return sum(n for _s, n in self.head.counts)

    def find(self, file_id: str) -> list[CatalogEntry]:
        """The rows of one fileID: one shard read."""
        if not any(s == shard_of_id(file_id) for s, _n in self.head.counts):
            return []
        return [c for c in self._shard(shard_of_id(file_id)) if c.file_id == file_id]


class CachedListing(ShardStream):
    """An import's Manifest.db whose catalog the cache holds already: the stat cache names the file's chunks, as it
    does for every file it lets an import skip, and the catalog of those bytes is cached under their id (sync/catalog.py
    `catalog_key`). The same bytes parse to the same rows, problems and conformance, so the folder is compared with
    the cached shards instead of parsing the file again (no child process, no SQLite, no MBFile decoding, no memo
    written: the cache's stays), and nothing needs caching afterwards (`cached`). A shard gone from the cache
    meanwhile (damage found, the cache rebuilt) parses the file after all (`reparse`), past the shards compared.
    Used as FolderCompare's stream, as ManifestStream is. Memory: one shard's rows."""

    cached = True

    def __init__(self, repo: Repository, head: CachedHead, reparse: Callable[[], ManifestStream]) -> None:
        self._repo, self.head, self._reparse = repo, head, reparse
        self._left = iter(head.counts)
        self._pending: CatalogShard | None = None
        self._last: str | None = None
        self._stream: ManifestStream | None = None
        self.conforming = head.conforming

    def _read(self, shard: str, count: int) -> CatalogShard | None:
        """The cached rows as they lie: the comparison reads them a row at a time (`CatalogShard.file_rows`)."""
        raw = self._repo.cache.derived_get(self.head.key + b"/" + shard.encode(errors="surrogatepass"))
        return None if raw is None else CatalogShard(shard, raw, count, [], [], None, True)

    def _next(self) -> CatalogShard | None:
        if self._pending is not None:
            got, self._pending = self._pending, None
            return got
        if self._stream is None:
            shard = next(self._left, None)
            if shard is None:
                return None
            got = self._read(*shard)
            if got is not None:
                self._last = got.shard
                return got
            self._stream = self._reparse()
        for got in self._stream.upto(None):
            if self._last is None or got.shard > self._last:
                return got
        return None

    @property
    def problems(self) -> list:
        if self._stream is not None:
            self.conforming = self._stream.conforming
            return self._stream.problems
        return [list(p) for p in self.head.problems]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class FolderCompare:
    """An import's folder against its Manifest.db a shard at a time, as the walk goes: each catalog shard is compared
    with the walk's shard of the same name (sync/layouts.py `compare`: listed but missing, another size) and spooled
    (`listed`) for the cache, written once the snapshot is committed. Memory: one shard of each and the problems."""

    def __init__(self, stream: ManifestStream | CachedListing, listed: Spool, folder: str) -> None:
        self.stream, self.listed, self._folder = stream, listed, folder
        self.cached = isinstance(stream, CachedListing)  # nothing to spool: the cache holds the catalog
        self._problems: list[str] = []

    def shard(self, shard: str | None, files: Iterable[tuple[str, int]] = ()) -> None:
        """The walk's shard `shard` (an `xx/` folder, never the top level) with its files (path, size); None once
        the walk is done."""
        present = dict(files)
        try:
            for got in self.stream.upto(shard):
                self._problems += MANIFEST_DB.compare_files(present if got.shard == shard else {}, got.file_rows())
                if not self.cached:
                    self.listed.append([got.shard, got.rows, got.count])
        except ManifestInvalid as e:
            raise BackupFolderInvalid(self._folder, f"unreadable catalog: {e.reason}") from None

    def finish(self) -> list[str]:
        """The unusable rows, then what the folder lacks or holds at another size, in fileID order."""
        self.shard(None)
        return [m for _p, m in self.stream.problems] + self._problems
