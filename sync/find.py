"""`find`: a glob or substring over the phone's file names across every live snapshot of every device.

A pattern with `*`, `?` or `[` is a glob (fnmatch, case-insensitive) matched against the whole domain path and
against the file's name; anything else is a case-insensitive substring of the domain path. Directories are not
hits (their files are). Each hit is one domain path of one device, with the live snapshots holding it (oldest
first, by backup date), so its first and last version, the sizes it had, and whether the device's current
snapshot holds it. Snapshots the phone encrypted are searched with the backup password (`password`) and otherwise
counted in `FindResult.encrypted` (no password, or one that does not open them). An encrypted snapshot's index is
used, cached or not, only once the password opened it in this process.

Search index, per snapshot: its non-directory domain paths joined by newlines, with each line's size, cached in the
LMDB cache (`derived`, sealed) under `find/<format>/<tree id>` (the tree id names the snapshot's content, so the
entry never goes stale). Value: msgpack `[text, sizes, offsets]` (FIND_CACHE_FORMAT 1), sizes as little-endian
int64 and line start offsets as little-endian uint32 arrays. A search lowercases the text once and finds the
pattern's longest literal run in it with `str.find` (a glob's match must contain it), then tests only those lines
with the exact matcher; a pattern with no literal tests every line. Built from the snapshot's catalog
(sync/catalog.py) the first time a snapshot is searched.
Memory: one snapshot's index (~70 bytes a file, twice while lowercased) plus the hits.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msgpack

from phonevault.store.errors import PathNotFound
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository

from .catalog import domain_path, load_catalog
from .encrypted import BackupPassword
from .errors import EncryptedBackup, EncryptionUnsupported, KeybagDamaged, WrongBackupPassword
from .records import backup_meta

FIND_CACHE_FORMAT = 1
FLAG_DIR = 2
GLOB_CHARS = "*?["


@dataclass(frozen=True, slots=True)
class Hit:
    device_key: str
    path: str  # domain path
    snapshots: tuple[SnapshotRecord, ...]  # live snapshots holding it, oldest first
    sizes: tuple[int, ...]  # the sizes it had, in the order first seen
    in_current: bool

    @property
    def first(self) -> SnapshotRecord:
        return self.snapshots[0]

    @property
    def last(self) -> SnapshotRecord:
        return self.snapshots[-1]


@dataclass(frozen=True, slots=True)
class FindResult:
    hits: tuple[Hit, ...]  # by device, then path
    searched: int  # snapshots searched
    encrypted: tuple[SnapshotRecord, ...]  # snapshots that could not be (the phone encrypted them)
    truncated: bool  # more hits than `limit`


def matcher(pattern: str) -> Callable[[str], bool]:
    """The predicate a domain path is tested with (see the module docstring)."""
    low = pattern.lower()
    if any(c in pattern for c in GLOB_CHARS):
        rx = re.compile(fnmatch.translate(low))
        return lambda path: bool(rx.match(path.lower()) or rx.match(path.rsplit("/", 1)[-1].lower()))
    return lambda path: low in path.lower()


def literal(pattern: str) -> str:
    """The longest run of `pattern` (lowercased) that every path it matches contains verbatim: the pattern itself
    for a substring; for a glob, the longest stretch outside wildcards and bracket expressions."""
    low = pattern.lower()
    if not any(c in low for c in GLOB_CHARS):
        return low
    runs, cur, i = [], [], 0
    while i < len(low):
        c = low[i]
        if c in "*?":
            runs.append("".join(cur))
            cur = []
        elif c == "[":
            runs.append("".join(cur))
            cur = []
            j = i + 1 + (low[i + 1 : i + 2] == "!")
            j += low[j : j + 1] == "]"  # fnmatch: "[]…]" and "[!]…]" hold a literal "]"
            close = low.find("]", j)
            if close != -1:  # without one, fnmatch takes "[" literally: ending the run here is still safe
                i = close
        else:
            cur.append(c)
        i += 1
    runs.append("".join(cur))
    return max(runs, key=len)


@dataclass(frozen=True, slots=True)
class _Index:
    text: str
    sizes: array
    offsets: array

    def lines(self, needle: str) -> Iterator[int]:
        """Indexes of the lines containing `needle` (lowercase), each once, in order; every line for ""."""
        if not needle:
            yield from range(len(self.offsets))
            return
        low = self.text.lower()
        if len(low) != len(self.text):  # a name whose lowercase is longer ("İ"): offsets no longer line up
            yield from (k for k in range(len(self.offsets)) if needle in self.path(k).lower())
            return
        at, last = low.find(needle), -1
        while at != -1:
            line = bisect.bisect_right(self.offsets, at) - 1
            if line != last:
                yield line
                last = line
            nxt = low.find("\n", at)
            if nxt == -1:
                break
            at = low.find(needle, nxt + 1)

    def path(self, line: int) -> str:
        start = self.offsets[line]
        end = self.offsets[line + 1] - 1 if line + 1 < len(self.offsets) else len(self.text)
        return self.text[start:end]


def _array(code: str, data: bytes) -> array:
    a = array(code)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def _bytes(a: array) -> bytes:
    if sys.byteorder != "little":
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def snapshot_index(repo: Repository, snap: SnapshotRecord, password: BackupPassword | None = None) -> _Index:
    """The snapshot's search index (cached; see the module docstring). For a snapshot the phone encrypted, without
    ``password`` EncryptedBackup, with one that does not open it WrongBackupPassword; PathNotFound for a snapshot
    with no file list."""
    catalog = load_catalog(repo, snap, password) if backup_meta(snap).encrypted else None  # opened, or raises
    key = b"find/%d/" % FIND_CACHE_FORMAT + snap.tree
    if (cached := repo.cache.derived_get(key)) is not None:
        try:
            text, sizes, offsets = msgpack.unpackb(cached)
            return _Index(text, _array("q", sizes), _array("I", offsets))
        except (ValueError, TypeError, msgpack.UnpackException):
            pass  # a value of another shape: built again below and replaced
    paths, sizes = [], array("q")
    for c in catalog if catalog is not None else load_catalog(repo, snap):
        if c.flags != FLAG_DIR:
            paths.append(domain_path(c).replace("\n", " "))  # a newline in a name would split its line
            sizes.append(c.size)
    offsets = array("I")
    at = 0
    for p in paths:
        offsets.append(at)
        at += len(p) + 1
    index = _Index("\n".join(paths), sizes, offsets)
    repo.cache.derived_put(key, msgpack.packb([index.text, _bytes(sizes), _bytes(offsets)]))
    return index


def find(
    repo: Repository,
    views: Iterable[DeviceView],
    pattern: str,
    *,
    limit: int | None = None,
    password: BackupPassword | None = None,
) -> FindResult:
    match = matcher(pattern)
    needle = literal(pattern)
    hits: list[Hit] = []
    searched = 0
    encrypted: list[SnapshotRecord] = []
    for view in views:
        live = sorted(view.live(), key=lambda s: (s.time, s.seq))
        found: dict[str, tuple[list[SnapshotRecord], list[int]]] = {}
        for snap in live:
            try:
                index = snapshot_index(repo, snap, password)
            except (EncryptedBackup, WrongBackupPassword, EncryptionUnsupported, KeybagDamaged):
                encrypted.append(snap)
                continue
            except PathNotFound:  # no file list at all: nothing to search by name
                continue
            searched += 1
            for line in index.lines(needle):
                path = index.path(line)
                if not match(path):
                    continue
                holders, sizes = found.setdefault(path, ([], []))
                if not holders or holders[-1].id != snap.id:
                    holders.append(snap)
                if index.sizes[line] not in sizes:
                    sizes.append(index.sizes[line])
        for path in sorted(found):
            holders, sizes = found[path]
            hits.append(Hit(view.key, path, tuple(holders), tuple(sizes), any(s.id == view.head for s in holders)))
    truncated = limit is not None and len(hits) > limit
    return FindResult(tuple(hits[:limit] if truncated else hits), searched, tuple(encrypted), truncated)
