"""MobileSync backup folders into the vault: import (Finder, iTunes, idevicebackup2 folders); export is sync/export.py.

A snapshot's content is the backup folder itself, file for file (paths relative to `<UDID>/`), so export gives back
exactly what was imported: same bytes, same names, same modes and mtimes. Import reads files in 1 MiB blocks and
pushes them into the store's chunker (memory does not depend on file size) and skips files whose stat (size, mtime,
inode, ctime) matches the stat cache, so re-importing an unchanged folder reads nothing but Manifest metadata. A
shard whose stat-cache entries make the parent's tree node is the parent's shard: its chunks are not looked up one
by one in the blob index (`_inherit_shard`); a Manifest.db the stat cache knows, whose catalog the cache holds, is
not parsed again: the folder is compared with the cached shards (catalogcache.CachedListing).

Memory: one shard (a top-level `xx/` folder: its listing, the next one's looked up in the stat cache and the next
WALKERS being listed, all held packed: sync/folderwalk.py `_Packed`, its staged entries, the parent's shard
while diffed, its Manifest.db rows, packed: sync/catalogshards.py), ≤ 8 MiB of small files read ahead (a child process,
~20 MB: sync/smallreads.py), one delta group and two packs; the cache's pages unmapped after each shard
(store/residency.py). A flat layout (iOS 4–9, iPhone OS 3): one shard, its list parsed whole, ~28 bytes a file
(`_Present`). A file changed between walk and read: stored as read, named in `problems`.

Layouts (sync/layouts.py, recorded in the snapshot): Manifest.db with xx/<fileID> (iOS 10+), Manifest.mbdb with
flat <fileID> files (iOS 4–9, parsed whole first), .mdinfo/.mddata pairs (iPhone OS 3, likewise). A snapshot is
dated by the backup itself (its plists' dates, else its newest file's mtime: sync/dates.py), not by its import.

Imperfect sources: files listed but absent, or whose size disagrees with the list, rows that cannot be used
(undecodable, a fileID listed twice), files of a flat folder that no record names, plist flags that are not
booleans, no plist date to trust (dated by the newest mtime instead), and a UDID that cannot name a folder (the
folder's own name is used instead) are named in `problems`; everything present is stored exactly and the snapshot
is committed; the CLI then exits 3. An `IsEncrypted` that is not a boolean is decided by the list itself: a
Manifest.db opens as a database (plaintext, browsable) or it does not (stored as the phone encrypted it);
Manifest.mbdb records and .mdinfo files say whether they are encrypted. Refused outright: not a folder, no
Manifest.db, Manifest.mbdb or .mdinfo, a list that cannot be read (unless the phone encrypted a Manifest.db).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository, now_us
from phonevault.store.spool import Spool
from phonevault.store.trees import FileEntry, ShardRef, lookup, read_root
from phonevault.store.writer import SnapshotWriter

from .catalog import ReadyParse, catalog_key, manifest_stream, parse_legacy_folder, store_catalog, store_catalog_shards
from .catalogcache import CachedListing, FolderCompare, read_head
from .catalogshards import ManifestStream
from .dates import INFO_PLIST, MANIFEST_PLIST, STATUS_PLIST, date_backup
from .decrypted import Decrypting, decrypted_meta, decrypting_folder
from .encrypted import BackupPassword
from .errors import BackupFolderInvalid, ManifestInvalid
from .folderwalk import WALKERS as _WALKERS
from .folderwalk import FileAhead as _FileAhead
from .folderwalk import Paths as _Paths
from .folderwalk import Present as _Present
from .folderwalk import ReadAhead as _ReadAhead
from .folderwalk import Stat as _Stat
from .folderwalk import Total as _Total
from .folderwalk import _Packed
from .folderwalk import find_backup_folders as find_backup_folders  # the import command finds folders here
from .folderwalk import is_utf8 as _is_utf8
from .folderwalk import stat_key as _stat_key
from .folderwalk import walk_ahead as _walk_ahead
from .layouts import LAYOUTS, MANIFEST_DB, MDINFO, Layout, detect_layout, opens_as_database
from .paths import shown, unsafe_reason
from .plists import DeviceInfo, read_info_plist_dated, read_manifest_plist, read_status_plist
from .records import BackupMeta, device_record
from .smallreads import ReaderProcess as _ReaderProcess
from .smallreads import SmallReads as _SmallReads

BLOCK = 1 << 20
STAT_PIECE = 512  # stat-cache updates spooled at a time (a list of a shard's was ~1.4 MB at 1 000 000 files)
METADATA = ("Info.plist", "Manifest.plist", "Manifest.db", "Status.plist")

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total: None until it is counted)


@dataclass(slots=True)
class FolderMeta:
    device: DeviceInfo
    encrypted: bool
    catalog: ManifestStream | CachedListing | ReadyParse | None  # None if the phone encrypted the file list
    problems: list[str] = field(default_factory=list)
    meta: BackupMeta = field(default_factory=BackupMeta)
    dates: tuple = ()  # ((source, datetime | None), …) in the order sync/dates.py takes them
    decrypt: Decrypting | None = None  # --store-decrypted: the keys that store it decrypted (sync/decrypted.py)


def read_folder_meta(folder: Path, repo: Repository) -> FolderMeta:
    problems: list[str] = []
    manifest_db = folder / "Manifest.db"
    if (layout := detect_layout(folder)) is None:
        raise BackupFolderInvalid(
            str(folder), "no Manifest.db, Manifest.mbdb or .mdinfo files (an interrupted backup?)"
        )
    if layout is MANIFEST_DB and (manifest_db.is_symlink() or not manifest_db.is_file()):
        raise BackupFolderInvalid(str(folder), "Manifest.db is not a regular file (a link is not followed)")

    def read_plist(name: str, reader):
        p = folder / name
        if p.is_symlink() or (p.exists() and not p.is_file()):  # a link may point out of the folder: not the backup
            problems.append(f"{name}: not a regular file (skipped)")
            return None
        if not p.is_file():
            if name != "Status.plist" or layout is not MDINFO:  # iTunes wrote none for iPhone OS 3
                problems.append(f"{name}: missing")
            return None
        try:
            return reader(p.read_bytes(), str(p))
        except ManifestInvalid as e:
            problems.append(str(e))
            return None

    info = read_plist("Info.plist", read_info_plist_dated)
    manifest = read_plist("Manifest.plist", read_manifest_plist)
    status = read_plist("Status.plist", read_status_plist)
    for plist in (info, manifest, status):
        problems += plist.problems if plist is not None else ()
    device = info.device if info is not None else DeviceInfo(udid="")
    if not device.udid and manifest is not None:
        lockdown = manifest.raw.get("Lockdown")
        udid = lockdown.get("UniqueDeviceID") if isinstance(lockdown, dict) else None
        device = DeviceInfo.from_dict({**device.to_dict(), "udid": udid or ""})
    if device.udid and (why := unsafe_reason(device.udid, component=True)) is not None:
        # The UDID names the folder an export writes; a phone writes its own Info.plist, so it may name anything.
        problems.append(f"the backup names its device {device.udid!r}, which cannot name a folder ({why})")
        device = DeviceInfo.from_dict({**device.to_dict(), "udid": ""})
    if not device.udid:
        if unsafe_reason(folder.name, component=True) is not None:
            raise BackupFolderInvalid(str(folder), "no usable UDID in Info.plist or Manifest.plist, nor as its name")
        device = DeviceInfo.from_dict({**device.to_dict(), "udid": folder.name})
        problems.append(f"no usable UDID in Info.plist or Manifest.plist; using the folder name {shown(folder.name)}")
    encrypted = manifest.is_encrypted if manifest is not None else False
    catalog = None
    if layout is not MANIFEST_DB:
        catalog, encrypted = _legacy_catalog(folder, layout, encrypted, problems)
    elif encrypted is None:
        encrypted = not opens_as_database(manifest_db)
        problems.append(
            "Manifest.db is encrypted (not a database): stored as it is, not browsable"
            if encrypted
            else "Manifest.db is a plain database: the backup is taken as not encrypted by the phone"
        )
    if layout is MANIFEST_DB and not encrypted:
        try:
            catalog = _cached_listing(repo, manifest_db, device.udid) or manifest_stream(
                repo, repo.device_key(device.udid), manifest_db
            )
        except ManifestInvalid as e:
            raise BackupFolderInvalid(str(folder), f"unreadable catalog: {e.reason}") from None
    meta = BackupMeta(
        encrypted=encrypted,
        ios_version=device.ios_version or (manifest.product_version if manifest else None),
        backup_date=status.date.isoformat() if status and status.date else None,
        snapshot_state=status.snapshot_state if status else None,
        is_full_backup=status.is_full_backup if status else None,
        layout=layout.name,
    )
    dates = (
        (STATUS_PLIST, status.date if status else None),
        (MANIFEST_PLIST, manifest.date if manifest else None),
        (INFO_PLIST, info.last_backup_date if info else None),
    )
    return FolderMeta(device, encrypted, catalog, problems, meta, dates)


def _cached_listing(repo: Repository, manifest_db: Path, udid: str) -> CachedListing | None:
    """The catalog cached for a Manifest.db the stat cache knows (sync/catalogcache.py `CachedListing`), or None.
    The stat key is the one the walk makes for the file, so it is skipped on exactly the terms every file is."""
    try:
        st = _Stat.of(os.lstat(manifest_db))
    except OSError:
        return None
    chunks = repo.cache.stat_get(_stat_key(str(manifest_db), st)) if stat.S_ISREG(st.st_mode) else None
    if chunks is None:
        return None
    entry = FileEntry(MANIFEST_DB.listing, st.st_size, st.st_mode, st.st_mtime_ns, tuple(bytes(c) for c in chunks))
    head = read_head(repo, catalog_key(repo, entry))
    if head is None:
        return None
    return CachedListing(repo, head, lambda: manifest_stream(repo, repo.device_key(udid), manifest_db))


def _legacy_catalog(
    folder: Path, layout: Layout, encrypted: bool | None, problems: list[str]
) -> tuple[ReadyParse | None, bool]:
    """A Manifest.mbdb or the .mdinfo files, parsed whole (damage anywhere refuses the folder before anything is
    stored), and whether the phone encrypted the backup. iOS 4–9 kept the list in plaintext (browsable either way);
    iPhone OS 3 encrypted the names too."""
    try:
        parsed, secret = parse_legacy_folder(layout, folder)
    except ManifestInvalid as e:
        what = Path(e.path).name
        reason = e.reason if what in e.reason else f"{what}: {e.reason}"
        raise BackupFolderInvalid(str(folder), f"unreadable catalog: {reason}") from None
    if encrypted is None:
        encrypted = secret > 0
        problems.append(f"{layout.listing}: {secret} file(s) encrypted by the phone: the backup is taken as "
                        f"{'' if encrypted else 'not '}encrypted")  # fmt: skip
    return (None if encrypted and layout is MDINFO else ReadyParse(parsed)), encrypted


@dataclass(slots=True)
class ImportResult:
    folder: Path
    device: DeviceInfo
    snapshot: SnapshotRecord
    problems: list[str]
    reused_files: int


def import_folder(
    repo: Repository,
    folder: Path,
    *,
    progress: Progress | None = None,
    store_decrypted: BackupPassword | None = None,
) -> ImportResult:
    """`store_decrypted`: an encrypted iOS 10.2+ folder is stored decrypted (sync/decrypted.py), its password
    checked before anything is stored."""
    folder = folder.resolve()
    with _FileAhead(repo.cache.path / "data.mdb"):  # the stat cache and cached catalog, read in large reads
        fm = read_folder_meta(folder, repo)
        if store_decrypted is not None and fm.encrypted:
            fm.decrypt = decrypting_folder(folder, fm.meta.layout, store_decrypted, fm.problems)
        try:
            return _import(repo, folder, fm, progress)
        finally:
            if fm.catalog is not None:
                fm.catalog.close()


def _import(repo: Repository, folder: Path, fm: FolderMeta, progress: Progress | None) -> ImportResult:
    # The writer is closed however the import ends: a failure before the commit releases its writers/ marker at
    # once, so a prune waiting on it need not wait for the garbage collector.
    with SnapshotWriter(repo, fm.device.udid, device_record(fm.device), incremental=False) as writer:
        with (
            repo.cache.spool() as new_stat,
            repo.cache.spool() as listed,
            _ReaderProcess() as readers,
            ThreadPoolExecutor(_WALKERS, "import-walk") as walker,
        ):
            streamed = isinstance(fm.catalog, (ManifestStream, CachedListing))
            listing = FolderCompare(fm.catalog, listed, str(folder)) if streamed else None
            return _stage_and_commit(repo, writer, folder, fm, new_stat, (readers, walker), progress, listing)


@dataclass(slots=True)
class _Staging:
    """What an import carries from shard to shard: nothing per file (a flat folder's `present` table aside)."""

    problems: list[str]
    readers: _ReaderProcess  # reads small files in a child process; `walker` lists the next shard meanwhile
    walker: ThreadPoolExecutor
    total: _Total  # the progress total, from the shards listed so far
    done: int = 0
    newest: int | None = None  # the newest mtime of a regular file
    present: _Present = field(default_factory=_Present)
    decrypt: Decrypting | None = None
    window: list[int] = field(default_factory=lambda: [0, 0])  # small files' bytes and files asked for, not yet staged
    parent: dict[str, ShardRef] = field(default_factory=dict)  # the parent snapshot's shards (`_inherit_shard`)


@dataclass(slots=True)
class _Plan:
    """One listed shard looked up in the stat cache, nothing of it staged yet (the writer holds one shard), and the
    reads of its small files, begun while the shard before it is staged. Its files stay packed (indices into them)."""

    shard: str
    files: _Packed
    empty_dirs: list[tuple[str, _Stat]]
    problems: list[str]
    cached: list[tuple[int, tuple[bytes, ...]]]  # (index in files, chunk ids)
    to_read: list[int]  # indices in files
    paths: _Paths
    small: _SmallReads | None = None


def _stage_and_commit(
    repo: Repository,
    writer: SnapshotWriter,
    folder: Path,
    fm: FolderMeta,
    new_stat: Spool,
    pools: tuple[_ReaderProcess, ThreadPoolExecutor],
    progress: Progress | None,
    listing: FolderCompare | None,
) -> ImportResult:
    """Stage and write one shard at a time (walk, stat cache, read, tree node, delta, its Manifest.db rows), so memory
    holds one shard whatever the number of files; the commit point is still the one event segment written at the end.
    A flat folder's list (parsed whole) is compared with the walk's `present` table at the end."""
    run = _Staging(list(fm.problems), *pools, _Total(folder), decrypt=fm.decrypt)
    if writer.parent is not None:
        run.parent = {r.shard: r for r in read_root(writer.parent.tree, writer.sink.get)}
    if progress:
        progress(0, None)
    shards = _walk_ahead(folder, run.walker)
    ahead: list[_Plan] = []  # the next shard, planned and its reads begun while this one is staged

    def plan_next() -> None:
        if not ahead and (listed := next(shards, None)) is not None:
            ahead.append(_plan(repo, folder, run, *listed))
            _begin_reads(run, ahead[0])

    plan_next()
    while ahead:
        plan = ahead.pop()
        _stage_shard(writer, run, plan, progress, plan_next, new_stat)
        for rel, st in plan.empty_dirs:
            if _is_utf8(rel):
                writer.add_dir(rel, st.st_mode, st.st_mtime_ns)
            else:
                run.problems.append(f"{shown(rel)}: the name is not UTF-8, so it is no name a phone writes (skipped)")
        if listing is None:
            run.present.add_shard(list(plan.files.sizes()))
        elif plan.shard:
            listing.shard(plan.shard, plan.files.sizes())
        if plan.shard:  # the top level ("") is written at the commit: it also holds empty top-level folders
            writer.seal_shard(plan.shard)
        plan_next()
    problems = run.problems
    catalog = None
    if listing is not None:
        problems += listing.finish()
    elif fm.catalog is not None:
        try:
            catalog = fm.catalog.result()
        except ManifestInvalid as e:
            raise BackupFolderInvalid(str(folder), f"unreadable catalog: {e.reason}") from None
        problems += catalog.problems
        problems += LAYOUTS[fm.meta.layout].compare(run.present, catalog.file_sizes, catalog.keyed)
    # Dated by the backup itself, so an archived backup imported late takes its place in history.
    dated = date_backup(fm.dates, run.newest, now_us())
    problems += dated.problems
    if run.decrypt is not None:
        problems += run.decrypt.problems
    meta = replace(fm.meta, problems=len(problems), dated_by=dated.source, **decrypted_meta(run.decrypt))
    snap = writer.commit(f"folder:{folder}", meta=meta.encode(), time_us=dated.time_us)
    # Only after the commit: a stat-cache entry must never point at chunks no snapshot holds.
    repo.cache.stat_put_many(item for batch in new_stat for item in batch)
    if catalog:  # so ls/extract/diff of this snapshot start at once
        store_catalog(repo, snap, catalog.packed)
    elif listing is not None:
        _cache_catalog(repo, snap, listing)
    return ImportResult(folder, fm.device, snap, problems, writer.stats.reused_files)


def _cache_catalog(repo: Repository, snap: SnapshotRecord, listing: FolderCompare) -> None:
    """The catalog into the cache, unless the cache holds it already under its key (the Manifest.db's bytes, through
    their chunk ids: an unchanged re-import's): the same key always holds the same value (store/derived.py), and
    writing every shard again cost CPU and mapped the cache pages of every row, the re-import's peak RSS, growing
    with the number of files. A listing read from the cache (`CachedListing`) spooled nothing: if its head is gone
    meanwhile, the first use of the catalog parses it from the vault."""
    if listing.cached:
        return
    entry = lookup(snap.tree, MANIFEST_DB.listing, repo.get_blob)
    if entry is not None and not entry.is_dir and read_head(repo, catalog_key(repo, entry)) is not None:
        return
    store_catalog_shards(repo, snap, listing.listed, listing.stream)


def _plan(
    repo: Repository,
    folder: Path,
    run: _Staging,
    shard: str,
    files: _Packed,
    empty_dirs: list[tuple[str, _Stat]],
) -> _Plan:
    """Look one listed shard up in the stat cache; nothing is staged (that is `_stage_shard`, in shard order)."""
    to_read: list[int] = []
    plan = _Plan(shard, files, empty_dirs, [], [], to_read, _Paths(str(folder) + os.sep, files, to_read))
    run.total.add(shard, files)
    for i, (rel, st) in enumerate(files):
        full = plan.paths.of(rel)
        if stat.S_ISREG(st.st_mode) and (run.newest is None or st.st_mtime_ns > run.newest):
            run.newest = st.st_mtime_ns
        if not _is_utf8(rel):
            plan.problems.append(f"{shown(rel)}: the name is not UTF-8, so it is no name a phone writes (skipped)")
            continue
        if not stat.S_ISREG(st.st_mode):
            plan.problems.append(f"{rel}: not a regular file (skipped)")
            continue
        key = _stat_key(full, st)
        # A file stored decrypted is never in the stat cache: its cached chunks would be the ciphertext's.
        cached = repo.cache.stat_get(key) if run.decrypt is None or not run.decrypt.keyed(rel) else None
        if cached is not None:
            plan.cached.append((i, tuple(cached)))  # bytes, as msgpack decodes bin
        else:
            to_read.append(i)
    return plan


def _begin_reads(run: _Staging, plan: _Plan) -> None:
    plan.small = _SmallReads(run.readers, plan.paths, plan.files.sizes_at(plan.to_read), run.window)
    plan.small.fill()


def _stage_shard(
    writer: SnapshotWriter, run: _Staging, plan: _Plan, progress: Progress | None, plan_next: Callable[[], None], spool
) -> None:
    """Stage one planned shard: each file from the stat cache if its chunks are still known, else read. Once every
    small file of it is asked for, `plan_next` begins the next shard's reads. Its stat-cache updates go to `spool`
    STAT_PIECE at a time."""
    new_stat: list[tuple[bytes, list]] = []
    run.problems += plan.problems
    late: list[int] = []  # in the stat cache, but a chunk of it is gone: read after all
    files = plan.files
    if _inherit_shard(writer, run, plan):
        run.done += sum(files.fields[4 * i] for i, _chunks in plan.cached)
    else:
        for i, chunks in plan.cached:
            rel, st = files[i]
            if writer.put_entry(FileEntry(rel, st.st_size, st.st_mode, st.st_mtime_ns, chunks)):
                run.done += st.st_size
            else:
                late.append(i)
    if progress:
        progress(run.done, run.total.value())
    if plan.small is None:
        _begin_reads(run, plan)
    small, paths = plan.small, plan.paths
    ahead = _ReadAhead(paths, files.sizes_at(plan.to_read))
    try:
        for n, i in enumerate(plan.to_read):
            ahead.advance(n)
            if small.all_asked:
                plan_next()
            rel, st = files[i]
            _stage_file(writer, run, rel, paths.of(rel), st, small.take(n), progress, new_stat)  # rel decoded once
            if len(new_stat) >= STAT_PIECE:
                spool.append(new_stat)
                new_stat.clear()
        for rel, st in map(files.__getitem__, late):
            _stage_file(writer, run, rel, paths.of(rel), st, None, progress, new_stat)
    finally:
        small.close()
    if progress:
        progress(run.done, run.total.value())
    spool.append(new_stat)


def _inherit_shard(writer: SnapshotWriter, run: _Staging, plan: _Plan) -> bool:
    """Stage a shard whose every file the stat cache knows as the parent's shard if its entries make the parent's
    node (store/writer.py `put_parent_shard`): an unchanged re-import then looks up no chunk in the blob index. The
    top level ("") too: its Manifest.db is thousands of chunks (56 MB of the index mapped at 300 000 files). Else (a
    file to read, an empty folder, which is staged after this, another node) False: each entry is checked by
    `put_entry`."""
    ref = run.parent.get(plan.shard)
    if ref is None or plan.to_read or plan.empty_dirs or len(plan.cached) != ref.files:
        return False
    pairs = ((plan.files[i], c) for i, c in plan.cached)
    entries = [FileEntry(rel, st.st_size, st.st_mode, st.st_mtime_ns, c) for (rel, st), c in pairs]
    return writer.put_parent_shard(ref.node, entries)


def _stage_file(
    writer: SnapshotWriter,
    run: _Staging,
    rel: str,
    full: str,
    st: _Stat,
    data: bytes | OSError | None,
    progress: Progress | None,
    new_stat: list[tuple[bytes, list]],
) -> None:
    """One file to store: `data` as the reader process read it whole, or None: streamed from here."""
    if run.decrypt is not None and run.decrypt.stage_file(writer, rel, full, st):
        run.done += st.st_size
        return
    try:
        if isinstance(data, OSError):
            raise data
        if data is not None:  # a small file, read whole by the reader process
            entry = writer.put_bytes(rel, st.st_mode, st.st_mtime_ns, data)
            run.done += len(data)
        else:
            entry = _stream_file(writer, rel, full, st, run, progress)
    except OSError as e:
        run.problems.append(f"{rel}: unreadable ({e.strerror})")
        return
    if entry.size == st.st_size:
        new_stat.append((_stat_key(full, st), list(entry.chunks)))
    else:  # stored as read; never put in the stat cache, so the next import reads it again
        run.problems.append(f"{rel}: changed while it was read ({st.st_size} bytes listed, {entry.size} read)")


def _stream_file(
    writer: SnapshotWriter, rel: str, full: str, st: _Stat, run: _Staging, progress: Progress | None
) -> FileEntry:
    """A file too large for the reader process, read into the chunker's buffer 1 MiB at a time (`read_from`)."""
    fw = writer.open_file(rel, st.st_mode, st.st_mtime_ns)
    with open(full, "rb") as f:
        while n := fw.read_from(f, BLOCK):
            run.done += n
            if progress:
                progress(run.done, run.total.value())
    return fw.close()
