"""What damage in the vault costs, said as the phone names its files.

The store names what it cannot read back by backup-folder path (`ab/ab12…`, `Manifest.db`, or a glob such as
`ab/**` for a tree node it cannot read: store/check.py). People know their files by domain path
(`CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC`), which only the snapshot's catalog knows (sync/catalog.py).
`domain_names` maps one to the other where it can: a path no catalog row stores (the folder's own metadata, a glob,
a snapshot the phone encrypted, or any path when the catalog itself is what is damaged) stays as it is.
Cost: the snapshot's catalog (cached after the first load, see catalog.py), and only when there is damage to name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository

from .catalog import domain_path, load_catalog
from .paths import shown


def domain_names(repo: Repository, snap: SnapshotRecord, paths: Iterable[str]) -> dict[str, str]:
    """backup-folder path -> domain path, for every path given (a path the catalog cannot name maps to itself)."""
    wanted = set(paths)
    names = {p: p for p in wanted}
    try:
        catalog = load_catalog(repo, snap)
    except PhonevaultError:
        return names  # encrypted by the phone, or the catalog is damaged too: backup paths are all there is
    for c in catalog:
        stored = catalog.layout.backup_path(c.file_id)
        if stored in wanted and names[stored] == stored:
            names[stored] = domain_path(c)
    return names


def describe(repo: Repository, snap: SnapshotRecord, damaged: Mapping[str, str], verb: str) -> list[str]:
    """One line per damaged backup path, by the phone's name: `<domain path>: not <verb> (<why>)`."""
    names = domain_names(repo, snap, damaged)
    out = []
    for path in sorted(damaged, key=lambda p: names[p]):
        name = names[path]
        also = f" ({shown(path)})" if name != path else ""
        out.append(f"{shown(name)}{also}: not {verb}, it cannot be read back from the vault ({damaged[path]})")
    return out
