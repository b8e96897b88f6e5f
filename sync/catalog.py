"""The catalog projection: a snapshot seen as the phone's files (domain + path), not as hashed backup-folder names.

A snapshot's files are listed by its folder's layout (sync/layouts.py): Manifest.db, Manifest.mbdb or .mdinfo files.
A snapshot's catalog is read from the list it contains and cached (LMDB `derived`, keyed by the list's blob ids: the
same bytes always give the same catalog, so the cache never goes stale; for mdinfo the key covers every .mdinfo's
chunks, Manifest.plist's and every .mddata's size, all the catalog is made of). A Manifest.db's catalog is parsed,
cached and read back a shard of rows at a time (sync/catalogcache.py, CATALOG_SHARDS_FORMAT 3); the older lists'
cached value is msgpack `[rows, problems]` (CATALOG_CACHE_FORMAT 2): rows as `_row` packs them, problems as
`[domain path or "", message]`. A Manifest.db from the vault is spilled to a sealed image in the cache directory and
read by SQLite through a VFS over it (sync/sealeddb.py); the other lists are parsed in memory as bytes: nothing
decrypted is ever written to a file in plaintext outside the extract/export target. Memory: a Manifest.db's catalog,
one shard of rows (iterating it reads the cache again; parsing it from the vault adds SQLite's page cache and the
image's opened blocks, ~3 MiB whatever the number of rows); a Manifest.mbdb's bytes and its rows; for mdinfo the
snapshot's file list and one .mdinfo at a time; a catalog the phone encrypted is held whole, with its Manifest.db
while it is parsed.
Domain paths are `<domain>/<relativePath>`, e.g. `CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC`.

Rows that cannot be used are named, never dropped silently and never fatal: an undecodable row is left out of
the catalog and named in its problems; rows sharing one fileID (one stored file, several names: which one is its
own cannot be told) stay listed, are named, and are not extracted.

A backup the phone encrypted has an encrypted Manifest.db (iOS 10+) or encrypted .mdinfo (iPhone OS 3). With the
phone's backup password (a `BackupPassword`, asked for only when such a snapshot is read) an iOS 10.2+ one is read
by sync/encrypted.py: the password is checked against its keybag every time, then its Manifest.db is decrypted in
memory and parsed here like any other, and the catalog carries the file keys (`Catalog.keys`) that decrypt its
files on read. Its cache value (CATALOG_CACHE_FORMAT, key prefix `catalog/2/encrypted/`) is msgpack
`[packed catalog, {fileID: wrapped EncryptionKey}]`, sealed like every value of the cache. Without a password it is
`BackupPasswordNeeded` (an `EncryptedBackup`); an encrypted iPhone OS 3 backup is `EncryptedBackup` (not read).
Either can still be exported and restored as it is. iOS 4–9 kept Manifest.mbdb in plaintext, so those are browsed
and diffed as usual; only their files' bytes are encrypted (rows with `has_encryption_key`, refused one by one by
extract: their keybags predate iOS 10.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack

from phonevault.store.errors import CacheCorrupt, CorruptObject, PathNotFound
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, iter_tree, lookup

from .catalogcache import CATALOG_SHARDS_FORMAT, CachedHead, CachedRows, read_head, write_cached
from .catalogshards import ManifestStream, Memo, MemoWriter, old_memo, parse_shards, unpack_shard
from .encrypted import BackupPassword, FileKeys, decrypt_manifest_db, unlock, wrapped_keys
from .errors import BackupPasswordNeeded, EncryptedBackup, LegacyManifestInvalid
from .layouts import MANIFEST_DB, MBDB, MDINFO, Layout, layout_of
from .manifest import FLAG_FILE, CatalogEntry, ManifestSource, RowProblem, read_manifest_db
from .paths import shown
from .records import backup_meta

# Imported where they are used, not here: a cached Manifest.db catalog (every `ls`, `extract` of one photo) needs
# none of them, and importing them (SQLite's VFS over a sealed image, the older lists' readers, the writer behind
# files stored decrypted) cost a one-photo extract ~15 ms of its start-up: sync/sealeddb.py, sync/mbdb.py,
# sync/mdinfo.py, sync/decrypted.py.

CATALOG_CACHE_FORMAT = 2


def domain_path(c: CatalogEntry) -> str:
    return f"{c.domain}/{c.relative_path}" if c.relative_path else c.domain


def backup_path(file_id: str, layout: Layout = MANIFEST_DB) -> str:
    return layout.backup_path(file_id)


def under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or lies below it (domain paths; "" is below nothing but itself)."""
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    path: str  # the row's domain path, "" when the row does not even name one
    message: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """A snapshot's files by domain path, the rows of its file list that could not be used, and where its files'
    bytes are (`layout`). Iterates its entries: a Manifest.db's are read back from the cache a shard at a time on
    each iteration (`CachedRows`), the older lists' are held."""

    entries: tuple[CatalogEntry, ...] | CachedRows
    problems: tuple[CatalogProblem, ...] = ()
    layout: Layout = MANIFEST_DB
    keys: FileKeys | None = None  # a backup the phone encrypted, opened with its password: what decrypts its files

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def problems_under(self, path: str) -> list[str]:
        """The problems at or below a domain path ("" all), and those of rows naming no path at all."""
        path = path.strip("/")
        return [p.message for p in self.problems if not path or not p.path or under(p.path, path)]


def _memo_key(device_key: str) -> bytes:
    return b"mbfile-memo/1/" + device_key.encode()


def _row_problem(p: RowProblem, record: str) -> list:
    if p.domain is not None:
        path = f"{p.domain}/{p.relative_path}" if p.relative_path else p.domain
        return [path, f"{shown(path)}: {record} {shown(p.file_id)} is unusable ({p.reason}); not listed"]
    return ["", f"{record} {shown(p.file_id)} is unusable ({p.reason}); not listed"]


def _duplicate_problems(group: list[CatalogEntry]) -> list[list]:
    names = [domain_path(c) for c in group]
    out = []
    for name in names:
        others = ", ".join(shown(n) for n in names if n != name) or "itself"
        out.append(
            [name, f"{shown(name)}: its fileID {shown(group[0].file_id)} is also listed as {others}; which name the "
                   "stored file has cannot be told, so it is not extracted (export keeps it)"]
        )  # fmt: skip
    return out


def _pack(
    entries: Iterable[CatalogEntry], row_problems: list[RowProblem], record: str, notes: Iterable[str] = ()
) -> ParsedCatalog:
    """Catalog rows in fileID order (as every reader yields them) into what is cached. `row_problems` is read once
    `entries` is exhausted (a reader adds to it as it goes); `notes` are problems naming no row's path."""
    rows, sizes, keyed = [], {}, set()
    problems: list[list] = []
    group: list[CatalogEntry] = []  # rows are in fileID order, so rows sharing a fileID are neighbours
    for c in entries:
        if group and group[0].file_id != c.file_id:
            if len(group) > 1:
                problems += _duplicate_problems(group)
            group = []
        group.append(c)
        rows.append(_row(c))
        if c.flags == FLAG_FILE:
            sizes[c.file_id] = c.size
            if c.has_encryption_key:
                keyed.add(c.file_id)
    if len(group) > 1:
        problems += _duplicate_problems(group)
    problems = [_row_problem(p, record) for p in row_problems] + problems + [["", n] for n in notes]
    return ParsedCatalog(msgpack.packb([rows, problems]), sizes, b"", tuple(m for _p, m in problems), frozenset(keyed))


def _parse_packed(source: ManifestSource, packed_memo: bytes | None, where: str | None = None) -> ParsedCatalog:
    """The one parse of a Manifest.db (a file for an import, bytes from the vault otherwise) into what is cached."""
    memo = Memo(msgpack.unpackb(packed_memo) if packed_memo else {})
    row_problems: list[RowProblem] = []
    parsed = _pack(read_manifest_db(source, memo, row_problems, where), row_problems, MANIFEST_DB.record)
    return replace(parsed, packed_memo=msgpack.packb(memo.fresh))


def _row(c: CatalogEntry) -> list:
    return [c.file_id, c.domain, c.relative_path, c.flags, c.size, c.mode, c.mtime, c.target, c.protection_class,
            c.has_encryption_key]  # fmt: skip


def _unpack(packed: bytes, layout: Layout = MANIFEST_DB) -> Catalog:
    rows, problems = msgpack.unpackb(packed)
    return Catalog(tuple(CatalogEntry(*r) for r in rows), tuple(CatalogProblem(*p) for p in problems), layout)


@dataclass(frozen=True, slots=True)
class ParsedCatalog:
    """What an import needs from its file list, compact: the catalog already packed for the cache, the size of
    every file row (to name missing and truncated files), the rows that could not be used, and the file rows whose
    bytes the phone encrypted (`keyed`: iOS 4–9 pads those to 16 bytes, so their sizes differ)."""

    packed: bytes
    file_sizes: dict[str, int]
    packed_memo: bytes
    problems: tuple[str, ...] = ()
    keyed: frozenset[str] = frozenset()


def manifest_stream(repo: Repository, device_key: str, path: Path) -> ManifestStream:
    """An import's Manifest.db, parsed a shard at a time beside the folder's walk (sync/catalogshards.py); the file
    is the user's own backup folder's Manifest.db, read where it is (read-only, immutable); nothing is copied."""
    return ManifestStream(repo, device_key, path, (_row, _row_problem, _duplicate_problems))


class ReadyParse:
    """A file list parsed already: Manifest.mbdb and .mdinfo files are parsed
    whole before anything is stored, since damage anywhere in them refuses the folder."""

    def __init__(self, parsed: ParsedCatalog) -> None:
        self._parsed = parsed

    def result(self) -> ParsedCatalog:
        return self._parsed

    def close(self) -> None:
        pass


def parse_legacy_folder(layout: Layout, folder: Path) -> tuple[ParsedCatalog, int]:
    """The catalog of an iOS 4–9 or iPhone OS 3 folder and how many of its files the phone encrypted (records with
    a key; .mdinfo whose names are encrypted). ManifestInvalid for a list that cannot be read, before anything is
    stored."""
    from .mbdb import load_mbdb, mbdb_entries  # noqa: PLC0415  (see the imports)
    from .mdinfo import read_mdinfo_folder  # noqa: PLC0415

    if layout is MBDB:
        path = folder / "Manifest.mbdb"
        row_problems: list[RowProblem] = []
        parsed = _pack(mbdb_entries(load_mbdb(path), str(path), row_problems), row_problems, MBDB.record)
        return parsed, len(parsed.keyed)
    catalog = read_mdinfo_folder(folder)
    return _pack(catalog.entries, [], MDINFO.record, catalog.problems), catalog.encrypted


def catalog_key(repo: Repository, listing: FileEntry, layout: Layout = MANIFEST_DB) -> bytes:
    """The cache key of the catalog read from a Manifest.db or Manifest.mbdb: its bytes, through their chunk ids."""
    if layout is MANIFEST_DB:  # a shard at a time (sync/catalogshards.py)
        prefix = b"catalog/%d/" % CATALOG_SHARDS_FORMAT
    else:
        prefix = b"catalog/%d/" % CATALOG_CACHE_FORMAT + layout.name.encode() + b"/"
    return prefix + repo.key.blob_id(b"".join(listing.chunks))


def _flat_files(repo: Repository, snap: SnapshotRecord) -> dict[str, FileEntry]:
    return {e.path: e for e in iter_tree(snap.tree, repo.get_blob) if "/" not in e.path and not e.is_dir}


def _mdinfo_key(repo: Repository, files: dict[str, FileEntry]) -> bytes:
    """Everything an iPhone OS 3 catalog is made of: each .mdinfo's and Manifest.plist's chunks, and each .mddata's
    size (its bytes do not matter), keyed-hashed like every other key so nothing private is in it."""
    parts = [
        [p, e.size, [] if p.endswith(".mddata") else list(e.chunks)]
        for p, e in sorted(files.items())
        if p.endswith((".mdinfo", ".mddata")) or p == "Manifest.plist"
    ]
    return b"catalog/%d/mdinfo/" % CATALOG_CACHE_FORMAT + repo.key.blob_id(msgpack.packb(parts))


def _listing(repo: Repository, snap: SnapshotRecord, layout: Layout) -> tuple[bytes, FileEntry | dict]:
    """The cache key of a snapshot's catalog, and what it is read from (its list's entry; for mdinfo its files)."""
    if layout is MDINFO:
        files = _flat_files(repo, snap)
        return _mdinfo_key(repo, files), files
    entry = lookup(snap.tree, layout.listing, repo.get_blob)
    if entry is None or entry.is_dir:
        raise PathNotFound(layout.listing, f"snapshot {snap.hex[:12]}")
    return catalog_key(repo, entry, layout), entry


def store_catalog(repo: Repository, snap: SnapshotRecord, packed: bytes) -> None:
    """Cache the catalog an import parsed whole (Manifest.mbdb, .mdinfo), under the key a later load computes."""
    key, _source = _listing(repo, snap, layout_of(backup_meta(snap), f"snapshot {snap.hex[:12]}"))
    repo.cache.derived_put(key, packed)


def store_catalog_shards(
    repo: Repository, snap: SnapshotRecord, shards: Iterable[tuple[str, bytes, int]], stream: ManifestStream
) -> None:
    """Cache the catalog an import streamed (its shards spooled meanwhile), under the key a later load computes."""
    key, _source = _listing(repo, snap, MANIFEST_DB)
    write_cached(repo, key, shards, lambda: (stream.problems, stream.conforming))


def _read_whole(repo: Repository, entry: FileEntry) -> bytearray:
    """A stored file's bytes in one buffer of its size (no list of chunks beside the joined copy)."""
    buf = bytearray(entry.size)
    view, at = memoryview(buf), 0
    for chunk in repo.read_file(entry):
        if at + len(chunk) > len(buf):
            raise CorruptObject(entry.path, f"longer than the {entry.size} bytes its tree entry records")
        view[at : at + len(chunk)] = chunk
        at += len(chunk)
    view.release()
    del buf[at:]
    return buf


def load_catalog(repo: Repository, snap: SnapshotRecord, password: BackupPassword | None = None) -> Catalog:
    """A snapshot's catalog (cached). One the phone encrypted needs `password` (see the module docstring)."""
    meta = backup_meta(snap)
    catalog = _load_catalog(repo, snap, meta, password)
    if not meta.decrypted:
        return catalog
    from .decrypted import stored_keys  # noqa: PLC0415  (see the imports)

    # Files stored decrypted (sync/decrypted.py) read as stored; so does a Manifest.db stored decrypted.
    return stored_keys(repo, snap, meta, password, catalog)


def _load_catalog(repo: Repository, snap: SnapshotRecord, meta, password: BackupPassword | None) -> Catalog:
    where = f"snapshot {snap.hex[:12]}"
    layout = layout_of(meta, where)
    if meta.encrypted and layout is MANIFEST_DB and not (meta.decrypted and _manifest_decrypted(repo, snap)):
        if password is None:
            raise BackupPasswordNeeded(snap.hex[:12])
        return _load_encrypted(repo, snap, password)
    if meta.encrypted and layout is MDINFO:  # iOS 4–9 kept the file list in plaintext
        raise EncryptedBackup(snap.hex[:12])
    key, source = _listing(repo, snap, layout)
    if layout is MANIFEST_DB:
        return _load_sharded(repo, snap, key, source)
    if (cached := repo.cache.derived_get(key)) is not None:
        return _unpack(cached, layout)
    # In memory: the decrypted file list never touches a file (a killed `ls` must leave no plaintext behind).
    if layout is MBDB:
        from .mbdb import mbdb_entries  # noqa: PLC0415  (see the imports)

        row_problems: list[RowProblem] = []
        rows = mbdb_entries(_read_whole(repo, source), f"{where}: Manifest.mbdb", row_problems)
        parsed = _pack(rows, row_problems, MBDB.record)
    else:
        parsed = _mdinfo_from_vault(repo, source, where)
    repo.cache.derived_put(key, parsed.packed)
    return _unpack(parsed.packed, layout)


def _load_sharded(repo: Repository, snap: SnapshotRecord, key: bytes, source: FileEntry) -> Catalog:
    """A Manifest.db snapshot's catalog, read back a shard at a time from the cache (sync/catalogcache.py); parsed
    from the vault into the cache first if it is not there, through a sealed image (no file ever holds the vault's
    bytes in plaintext)."""

    def parse() -> CachedHead:
        from .sealeddb import sealed_manifest  # noqa: PLC0415  (see the imports)

        with sealed_manifest(repo, source) as manifest:  # SQLite reads its pages from a sealed spill, not memory
            messages = parse_shards(
                manifest,
                old_memo(repo, snap.device_key),
                f"snapshot {snap.hex[:12]}: Manifest.db",
                _row,
                _row_problem,
                _duplicate_problems,
            )
            stream = _ParsedHere(repo, snap.device_key, messages)
            write_cached(repo, key, stream.rows(), lambda: (stream.problems, stream.conforming))
        head = read_head(repo, key)
        if head is None:  # the cache failed and was rebuilt while it was written
            raise CacheCorrupt(str(repo.cache.path), "the catalog just written is not there")
        return head

    head = read_head(repo, key) or parse()
    problems = tuple(CatalogProblem(p, m) for p, m in head.problems)
    return Catalog(CachedRows(repo, head, parse), problems, MANIFEST_DB)


class _ParsedHere:
    """`parse_shards` run in this process: its shards' rows as they come, each shard's memo into the cache."""

    def __init__(self, repo: Repository, device_key: str, messages: Iterator[bytes]) -> None:
        self._repo, self._device_key, self._messages = repo, device_key, messages
        self._row_problems: list = []
        self._dup_problems: list = []
        self.conforming = True

    def rows(self) -> Iterator[tuple[str, bytes, int]]:
        memo = MemoWriter(self._repo, self._device_key)
        for message in self._messages:
            got = unpack_shard(message)
            if isinstance(got, list):
                self._row_problems += got
                break
            self._row_problems += got.row_problems
            self._dup_problems += got.dup_problems
            self.conforming = self.conforming and got.conforming
            memo.add(got.shard, got.memo)
            yield got.shard, got.rows, got.count
            self._repo.cache.trim()  # the cache pages this shard's rows and memo touched (store/residency.py)
        memo.finish()

    @property
    def problems(self) -> list:
        return self._row_problems + self._dup_problems


def _load_encrypted(repo: Repository, snap: SnapshotRecord, password: BackupPassword) -> Catalog:
    """An iOS 10.2+ snapshot the phone encrypted: the password is checked first (the keybag), then the catalog comes
    from the cache or from its Manifest.db, decrypted and parsed in memory."""
    where = f"snapshot {snap.hex[:12]}"
    unlocked = unlock(repo, snap, password)  # WrongBackupPassword before anything cached is used
    entry = lookup(snap.tree, MANIFEST_DB.listing, repo.get_blob)
    if entry is None or entry.is_dir:
        raise PathNotFound(MANIFEST_DB.listing, where)
    key = b"catalog/%d/encrypted/" % CATALOG_CACHE_FORMAT + repo.key.blob_id(b"".join(entry.chunks))
    if (cached := repo.cache.derived_get(key)) is not None:
        packed, wrapped = msgpack.unpackb(cached)
    else:
        image = decrypt_manifest_db(unlocked, _read_whole(repo, entry), where)
        wrapped = wrapped_keys(image, f"{where}: Manifest.db")
        memo = repo.cache.derived_get(_memo_key(snap.device_key))
        parsed = _parse_packed(image, memo, f"{where}: Manifest.db")  # empties `image` once parsed
        repo.cache.derived_put(_memo_key(snap.device_key), parsed.packed_memo)
        packed = parsed.packed
        repo.cache.derived_put(key, msgpack.packb([packed, wrapped]))
    return replace(_unpack(packed), keys=FileKeys(unlocked.class_keys, wrapped))


def _mdinfo_from_vault(repo: Repository, files: dict[str, FileEntry], where: str) -> ParsedCatalog:
    from .mdinfo import MAX_MANIFEST_BYTES, MAX_MDINFO_BYTES, data_name, mdinfo_catalog  # noqa: PLC0415

    def read(name: str, limit: int = MAX_MDINFO_BYTES) -> bytes:
        if files[name].size > limit:  # refused before it is read, as the folder reader refuses it
            raise LegacyManifestInvalid(f"{where}: {name}", f"{name} is larger than {limit:,} bytes; refused as absurd")
        return bytes(_read_whole(repo, files[name]))

    def data_size(fid: str) -> int | None:
        entry = files.get(data_name(fid))
        return entry.size if entry is not None else None

    def read_manifest() -> bytes | None:
        return read("Manifest.plist", MAX_MANIFEST_BYTES) if "Manifest.plist" in files else None

    names = [p for p in files if p.endswith(".mdinfo")]
    catalog = mdinfo_catalog(names, read, data_size, read_manifest, lambda name: f"{where}: {name}")
    return _pack(catalog.entries, [], MDINFO.record, catalog.problems)


@dataclass(frozen=True, slots=True)
class Listing:
    name: str
    path: str  # full domain path
    is_dir: bool
    size: int
    mtime: int
    file_id: str | None


def list_dir(catalog: Iterable[CatalogEntry], path: str = "") -> list[Listing]:
    """Immediate children of a domain path ("" lists the domains)."""
    path = path.strip("/")
    prefix = path + "/" if path else ""
    children: dict[str, Listing] = {}
    found = not path
    for c in catalog:
        full = domain_path(c)
        if full == path:
            found = True
            if c.flags != 2:
                return [Listing(full.rsplit("/", 1)[-1], full, False, c.size, c.mtime, c.file_id)]
            continue
        if not full.startswith(prefix):
            continue
        found = True
        rest = full[len(prefix) :]
        name, sep, _ = rest.partition("/")
        child = prefix + name
        if sep or c.flags == 2:
            old = children.get(name)
            size = (old.size if old and old.is_dir else 0) + (c.size if c.flags == 1 else 0)
            children[name] = Listing(name, child, True, size, max(c.mtime, old.mtime if old else 0), None)
        else:
            children[name] = Listing(name, child, False, c.size, c.mtime, c.file_id)
    if not found:
        raise PathNotFound(path, "this snapshot")
    return sorted(children.values(), key=lambda x: (not x.is_dir, x.name))


def select(catalog: Iterable[CatalogEntry], path: str) -> list[CatalogEntry]:
    """Files (flags 1) at or under a domain path, in catalog order."""
    path = path.strip("/")
    return [c for c in catalog if c.flags == FLAG_FILE and under(domain_path(c), path)]


def _manifest_decrypted(repo: Repository, snap: SnapshotRecord) -> bool:
    from .decrypted import manifest_decrypted  # noqa: PLC0415  (see the imports)

    return manifest_decrypted(repo, snap)
