"""`find`: a glob or substring over the phone's file names across every live snapshot of every device.

A pattern with `*`, `?` or `[` is a glob (fnmatch, case-insensitive) matched against the whole domain path and
against the file's name; anything else is a case-insensitive substring of the domain path. Directories are not
hits (their files are). Each hit is one domain path of one device, with the live snapshots holding it (oldest
first, by backup date), so its first and last version, the sizes it had, and whether the device's current
snapshot holds it. Snapshots the phone encrypted cannot be searched without the backup password and are counted
in `FindResult.encrypted`.

Cost: every live snapshot's catalog, from the cache (sync/catalog.py; the first search after an import parses
any catalog not cached yet), and one comparison per row. Memory: one catalog at a time plus the hits.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from phonevault.store.errors import PathNotFound
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository

from .catalog import domain_path, load_catalog
from .errors import EncryptedBackup

FLAG_DIR = 2


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


def matcher(pattern: str):
    """The predicate a domain path is tested with (see the module docstring)."""
    low = pattern.lower()
    if any(c in pattern for c in "*?["):
        rx = re.compile(fnmatch.translate(low))
        return lambda path: bool(rx.match(path.lower()) or rx.match(path.rsplit("/", 1)[-1].lower()))
    return lambda path: low in path.lower()


def find(repo: Repository, views: Iterable[DeviceView], pattern: str, *, limit: int | None = None) -> FindResult:
    match = matcher(pattern)
    hits: list[Hit] = []
    searched = 0
    encrypted: list[SnapshotRecord] = []
    truncated = False
    for view in views:
        live = sorted(view.live(), key=lambda s: (s.time, s.seq))
        found: dict[str, tuple[list[SnapshotRecord], list[int]]] = {}
        for snap in live:
            try:
                catalog = load_catalog(repo, snap)
            except EncryptedBackup:
                encrypted.append(snap)
                continue
            except PathNotFound:  # no file list at all: nothing to search by name
                continue
            searched += 1
            for c in catalog:
                if c.flags == FLAG_DIR:
                    continue
                path = domain_path(c)
                if not match(path):
                    continue
                holders, sizes = found.setdefault(path, ([], []))
                if not holders or holders[-1].id != snap.id:
                    holders.append(snap)
                if c.size not in sizes:
                    sizes.append(c.size)
        for path in sorted(found):
            holders, sizes = found[path]
            hits.append(Hit(view.key, path, tuple(holders), tuple(sizes), any(s.id == view.head for s in holders)))
    if limit is not None and len(hits) > limit:
        hits, truncated = hits[:limit], True
    return FindResult(tuple(hits), searched, tuple(encrypted), truncated)
