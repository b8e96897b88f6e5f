"""The three layouts of a MobileSync backup folder: what lists the files and where each file's bytes are.

    manifest-db  iOS 10 and later: Manifest.db (SQLite, sync/manifest.py) lists every file, directory and symlink;
                 a file's bytes are at xx/<fileID> (xx = the fileID's first two hex digits)
    mbdb         iOS 4–9: Manifest.mbdb (sync/mbdb.py) lists them; a file's bytes are at <fileID> in the root
    mdinfo       iPhone OS 3: no list; each file is <fileID>.mddata beside <fileID>.mdinfo, which names it
                 (sync/mdinfo.py)

The fileID is the same in all three: the lowercase hex SHA-1 of "<domain>-<relativePath>". A snapshot records its
folder's layout (BackupMeta.layout, by `Layout.name`); snapshots recorded before layouts existed are manifest-db.
Formats and sources: docs/protocol.md. Flat layouts put every file in the tree's root shard "" (store/trees.py
shards by first path component), so a changed file rewrites that one shard: fine for the folder sizes of those
years, a cost noted rather than paid for with a second tree format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from phonevault.store.errors import UnsupportedFormat

from .errors import ManifestInvalid
from .manifest import check_manifest_db
from .paths import shown
from .records import BackupMeta


@dataclass(frozen=True, slots=True)
class Layout:
    """How a backup folder lists its files and where each file's bytes are."""

    name: str  # as BackupMeta.layout records it
    listing: str  # what lists the files, as messages name it ("listed in …")
    record: str  # one entry of that list, as messages name it
    subfolders: bool  # bytes at xx/<fileID>; else flat in the folder's root
    suffix: str = ""  # after the fileID, for flat files
    metadata: frozenset[str] = frozenset()  # the root files of a flat folder that are not a file of the phone
    companion: str = ""  # the suffix of the file beside each one that names it (.mdinfo)

    def backup_path(self, file_id: str) -> str:
        return f"{file_id[:2]}/{file_id}" if self.subfolders else file_id + self.suffix

    def compare(self, present: Mapping[str, int], sizes: Mapping[str, int], keyed: AbstractSet[str]) -> list[str]:
        """A folder's files (`present`: path -> size) against its list (`sizes`: fileID -> size, `keyed`: the files
        the phone encrypted): `compare_files`."""
        return self.compare_files(present, ((fid, size, fid in keyed) for fid, size in sizes.items()))

    def compare_files(self, present: Mapping[str, int], files: Iterable[Sequence]) -> list[str]:
        """A folder's files (`present`: path -> size) against its list (`files`: [fileID, size, keyed] each): what
        the list names but the folder lacks at this layout's path, or holds at another size (a file the phone
        encrypted, keyed, is padded to a multiple of 16: 1 to 16 bytes more); in a flat folder, also the files
        nothing names (a companion file names its file even where the catalog could not use it: that is the
        catalog's to say)."""
        problems, listed = [], []
        subfolders, suffix, get = self.subfolders, self.suffix, present.get
        for fid, size, keyed in _one_per_file(files):
            # Once per row of every import: `backup_path` inlined, and a row present at its size done at once.
            rel = f"{fid[:2]}/{fid}" if subfolders else fid + suffix
            if not subfolders:
                listed.append(rel)
            if (have := get(rel)) is None:
                problems.append(f"{shown(rel)}: listed in {self.listing} but missing from the folder")
            elif have == size and not keyed:
                continue
            elif keyed and not (have % 16 == 0 and size < have <= size + 16):
                problems.append(f"{shown(rel)}: {have} bytes, {self.listing} says {size} before padding (truncated?)")
            elif not keyed and have != size:
                problems.append(f"{shown(rel)}: {have} bytes, {self.listing} says {size} (truncated?)")
        if not self.subfolders:
            named = set(listed) | self.metadata
            for rel in sorted(present.keys() - named):
                if self.companion and (
                    rel.endswith(self.companion) or rel.removesuffix(self.suffix) + self.companion in present
                ):
                    continue
                problems.append(f"{shown(rel)}: no {self.record} names it (stored as it is)")
        return problems


def _one_per_file(files: Iterable[Sequence]) -> Iterator[tuple[str, int, bool]]:
    """The rows of one fileID (neighbours: a list is in fileID order) as one, as a dict and a set of them had them:
    the last one's size, keyed if any of them is."""
    it = iter(files)
    if (first := next(it, None)) is None:
        return
    fid, size, keyed = first
    for f, s, k in it:
        if f == fid:
            size, keyed = s, keyed or k
            continue
        yield fid, size, keyed
        fid, size, keyed = f, s, k
    yield fid, size, keyed


MANIFEST_DB = Layout("manifest-db", "Manifest.db", "Manifest.db row", True)
# iOS 4.0 also wrote Manifest.mbdx (an index of fileID -> record offset iOS 5 dropped; nothing here needs it).
MBDB = Layout(
    "mbdb",
    "Manifest.mbdb",
    "Manifest.mbdb record",
    False,
    metadata=frozenset({"Info.plist", "Manifest.plist", "Status.plist", "Manifest.mbdb", "Manifest.mbdx"}),
)
# iTunes wrote no Status.plist for iPhone OS 3; libimobiledevice's idevicebackup writes one ({Backup Success}).
MDINFO = Layout(
    "mdinfo",
    "its .mdinfo",
    ".mdinfo",
    False,
    ".mddata",
    frozenset({"Info.plist", "Manifest.plist", "Status.plist"}),
    ".mdinfo",
)
LAYOUTS = {layout.name: layout for layout in (MANIFEST_DB, MBDB, MDINFO)}


def layout_of(meta: BackupMeta, where: str) -> Layout:
    if (layout := LAYOUTS.get(meta.layout)) is None:
        raise UnsupportedFormat(f"{where}: backup folder layout", meta.layout)
    return layout


def detect_layout(folder: Path) -> Layout | None:
    """Manifest.db wins (iOS 10 and later), then Manifest.mbdb (iOS 4–9), then any .mdinfo (iPhone OS 3)."""
    if (folder / "Manifest.db").is_file():
        return MANIFEST_DB
    if os.path.lexists(folder / "Manifest.mbdb"):  # anything there: the reader names what is wrong with it
        return MBDB
    with os.scandir(folder) as it:
        return MDINFO if any(e.name.endswith(".mdinfo") for e in it) else None


def opens_as_database(manifest_db: Path) -> bool:
    """Whether a Manifest.db opens as a database (plaintext) rather than as the bytes a phone encrypted."""
    try:
        check_manifest_db(manifest_db)
    except ManifestInvalid:
        return False
    return True
