"""What changed between two snapshots of a device: by the phone's file names, and by content.

Each row is one file, named by its domain path where a catalog of either snapshot names it (else by its path in the
backup folder: Manifest.db, Info.plist, a file no row names), and is one of:

    added      in the second snapshot only
    removed    in the first only
    modified   its bytes differ: its chunk id lists differ. Nothing is read but tree nodes: a chunk id is a keyed
               hash of the chunk's bytes, and a path's bytes are always cut the same way (the chunker is chosen by
               path and first bytes), so equal lists are equal bytes and unequal lists unequal bytes
    metadata   the same bytes with another mode or mtime, in the backup folder (a restore and the next backup
               write every file anew) or in the file list (the phone's own mode and mtime of the file, its
               Manifest.db row or iPhone OS 3 .mdinfo), or kept at another backup path (iOS 9 -> 10 moved every
               file into xx/). Left out unless asked for (`metadata=True`): bytes are what people diff for

Snapshots the phone encrypted are named by domain path once their catalogs are decrypted with the backup password,
and sized by their rows (not padded). Their stored bytes are ciphertext, and a file the phone re-encrypted with a
fresh key (a full backup, a password change) has other ciphertext for the same bytes: where the chunk lists differ
but the plain sizes agree, both are decrypted and their plaintext compared (its BLAKE3 cached sealed, per key and
chunk list), so such a file is `metadata` (same bytes, stored differently), not `modified`. That reads those files'
data once, only where encryption could be the difference, and only at or below `paths`.

A file kept at another backup path in each snapshot (the layout changed) is one row, not a removal and an addition.
An iPhone OS 3 `.mdinfo` is its file's metadata, so a changed one is its file's `metadata` row unless the file has
a row of its own. `paths` keeps the rows at or below any of the given domain paths (or backup paths); a path
that names nothing in either snapshot's catalog, nor a changed file, is PathNotFound (not an empty diff).

Cost (plain snapshots): the tree diff reads only the shards whose node ids differ; both catalogs are loaded (cached after their first
load) to name rows, and their file rows are compared by fileID for the phone's own metadata (a dict of the first
catalog's file rows: one tuple a row). Directories are not rows: the phone's are catalog rows without bytes, and
the backup folder's own (the empty xx/ folders a snapshot records) hold no file of the phone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import blake3

from phonevault.store.errors import PathNotFound, PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, diff_trees

from .catalog import Catalog, domain_path, load_catalog, under
from .encrypted import BackupPassword
from .errors import EncryptedBackup, FileUndecryptable
from .layouts import MDINFO
from .manifest import FLAG_FILE
from .paths import shown

KINDS = ("added", "removed", "modified", "metadata")


@dataclass(frozen=True, slots=True)
class DiffRow:
    path: str  # a domain path where a catalog names the file, else the backup-folder path
    kind: str  # one of KINDS
    old_size: int | None
    new_size: int | None
    domain: str | None = None  # the file's domain; None for a backup-folder file no catalog names


@dataclass(frozen=True, slots=True)
class DomainStat:
    """`diff --stat`: counts and bytes of one domain's rows (domain None: backup-folder files no catalog names)."""

    domain: str | None
    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata: int = 0
    added_bytes: int = 0
    removed_bytes: int = 0


def _catalog(repo: Repository, snap: SnapshotRecord, password: BackupPassword | None) -> Catalog | None:
    try:
        return load_catalog(repo, snap, password)
    except (EncryptedBackup, PathNotFound):  # encrypted, no password at hand, or no file list: backup paths stay
        return None


def _kind(old: FileEntry | None, new: FileEntry | None) -> str:
    if old is None:
        return "added"
    if new is None:
        return "removed"
    return "modified" if old.chunks != new.chunks else "metadata"


def diff(
    repo: Repository,
    a: SnapshotRecord,
    b: SnapshotRecord,
    paths: Sequence[str] = (),
    *,
    metadata: bool = False,
    password: BackupPassword | None = None,
) -> list[DiffRow]:
    """What changed from a to b, sorted by path (see the module docstring). Snapshots the phone encrypted are named
    by domain path with `password` (a wrong one is WrongBackupPassword); without one, by backup path."""
    cat_a, cat_b = _catalog(repo, a, password), _catalog(repo, b, password)
    catalogs = [c for c in (cat_a, cat_b) if c is not None]
    # An encrypted snapshot stores each file padded; its row's Size is the file's, as a plain backup's would be.
    plain_a, plain_b = _plain_sizes(cat_a), _plain_sizes(cat_b)
    names: dict[str, tuple[str, str, int]] = {}  # backup path -> (domain path, domain, size in the list)
    described: dict[str, str] = {}  # iPhone OS 3: <fileID>.mdinfo -> the <fileID>.mddata it describes
    for catalog in catalogs:
        for c in catalog:
            where = catalog.layout.backup_path(c.file_id)
            names[where] = (domain_path(c), c.domain, c.size)
            if catalog.layout is MDINFO:
                described[f"{c.file_id}.mdinfo"] = where

    # One pair of entries per name: a file that moved between backup paths (another layout) pairs up here.
    pairs: dict[str, list] = {}  # name -> [old entry, new entry, domain]
    companions: list[str] = []
    for ch in diff_trees(a.tree, b.tree, repo.get_blob):
        if all(e is None or e.is_dir for e in (ch.old, ch.new)):
            continue  # an empty xx/ folder of the backup: no phone file, no bytes
        if ch.path in described:
            companions.append(described[ch.path])
            continue
        name, domain, _size = names.get(ch.path, (ch.path, None, 0))
        pair = pairs.setdefault(name, [None, None, domain])
        pair[0] = pair[0] or ch.old
        pair[1] = pair[1] or ch.new
    wanted = [p.strip("/") for p in paths]
    rows = []
    for name, (old, new, dom) in pairs.items():
        kind = _kind(old, new)
        if (
            kind == "modified"
            and cat_a is not None
            and cat_b is not None
            and old.path in plain_a
            and plain_a.get(old.path) == plain_b.get(new.path)
            and (not wanted or any(under(name, p) for p in wanted))
            and _same_plaintext(repo, cat_a, old, cat_b, new, plain_a[old.path])
        ):
            kind = "metadata"  # re-encrypted with another key: the same bytes of the phone, stored differently
        rows.append(DiffRow(name, kind, _size_of(old, plain_a), _size_of(new, plain_b), dom))

    # The phone's own metadata of files whose bytes did not change: a changed .mdinfo, a changed catalog row.
    seen = set(pairs)
    for where in companions + _metadata_changed(catalogs):
        name, domain, size = names[where]
        if name not in seen:
            seen.add(name)
            rows.append(DiffRow(name, "metadata", size, size, domain))
    known = [name for name, _domain, _size in names.values()] + [r.path for r in rows]
    for p in wanted:  # a mistyped path would otherwise read as "nothing changed there"
        if not any(under(name, p) for name in known):
            raise PathNotFound(shown(p), "either snapshot's files")
    return sorted(
        (
            r
            for r in rows
            if (metadata or r.kind != "metadata") and (not wanted or any(under(r.path, p) for p in wanted))
        ),
        key=lambda r: r.path,
    )


def _size_of(e: FileEntry | None, plain: dict[str, int]) -> int | None:
    return plain.get(e.path, e.size) if e is not None else None


def _same_plaintext(
    repo: Repository, cat_a: Catalog, old: FileEntry, cat_b: Catalog, new: FileEntry, size: int
) -> bool:
    """Two stored files of encrypted snapshots whose ciphertexts differ: do they decrypt to the same bytes?"""
    one = _plain_digest(repo, cat_a, old, size)
    return one is not None and one == _plain_digest(repo, cat_b, new, size)


def _plain_digest(repo: Repository, catalog: Catalog, entry: FileEntry, size: int) -> bytes | None:
    """BLAKE3 of an encrypted file's plaintext, cached (sealed) under a keyed hash of its key and its chunk ids, so a
    file is decrypted for this once; None if it cannot be decrypted (the diff then says modified)."""
    assert catalog.keys is not None
    file_id = entry.path.rsplit("/", 1)[-1]
    try:
        key = catalog.keys.key(file_id, entry.path)
    except FileUndecryptable:
        return None
    cache_key = b"plain-digest/1/" + repo.key.blob_id(key + b"".join(entry.chunks))
    if (digest := repo.cache.derived_get(cache_key)) is not None:
        return digest
    h = blake3.blake3()
    try:
        for piece in catalog.keys.open(key, repo.read_file(entry), size, entry.path):
            h.update(piece)
    except PhonevaultError:
        return None
    repo.cache.derived_put(cache_key, h.digest())
    return h.digest()


def _plain_sizes(catalog: Catalog | None) -> dict[str, int]:
    """Backup path -> the file's own size, for the files of a snapshot the phone encrypted (read with its keys)."""
    if catalog is None or catalog.keys is None:
        return {}
    return {catalog.layout.backup_path(c.file_id): c.size for c in catalog if c.flags == FLAG_FILE}


def _metadata_changed(catalogs: list[Catalog]) -> list[str]:
    """Backup paths (in the second catalog's layout) of files both catalogs list with another mode or mtime."""
    if len(catalogs) != 2:
        return []
    old, new = catalogs
    before = {c.file_id: (c.mode, c.mtime) for c in old if c.flags == FLAG_FILE}
    return [
        new.layout.backup_path(c.file_id)
        for c in new
        if c.flags == FLAG_FILE and (was := before.get(c.file_id)) is not None and was != (c.mode, c.mtime)
    ]


def per_domain(rows: Iterable[DiffRow]) -> list[DomainStat]:
    """Rows counted per domain, domains sorted by name, backup-folder files (domain None) last."""
    acc: dict[str | None, dict[str, int]] = {}
    for r in rows:
        d = acc.setdefault(r.domain, dict.fromkeys(("added_bytes", "removed_bytes", *KINDS), 0))
        d[r.kind] += 1
        if r.kind == "added":
            d["added_bytes"] += r.new_size or 0
        elif r.kind == "removed":
            d["removed_bytes"] += r.old_size or 0
    return [DomainStat(dom, **acc[dom]) for dom in sorted(acc, key=lambda d: (d is None, d or ""))]
