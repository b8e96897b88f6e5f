"""Export: a snapshot written back as the MobileSync backup folder it was imported from (sync/mobilesync.py), bit
for bit: same bytes, same names, same modes and mtimes.

Export writes `<root>/<UDID>/` only if the UDID is one safe folder name and every file only at a tree path that
stays inside it (`paths`); it is built under a temporary name and renamed at the end, and a partial export is
removed when the export fails. A damaged snapshot exports everything that reads back: a file whose chunks (or whose
tree node) cannot be read is left out and named by its domain path (sync/damage.py), the rest is written
(`damaged`, exit 3); with `strict`, nothing is left in the target. A tree node that cannot be read costs nothing
while the snapshot's deltas fold (store/check.py `ReadableShards`).

Files are written on three threads beside the caller's: small files by two writers, each in folders of its own,
large ones by the caller and one more thread (sync/writeout.py `FileWriters`, `LargeWriter`).
Memory: one shard's entries, the next 8 MiB batch of small files read ahead (sync/writeout.py `ReadAhead`), bundles
of small files waiting for each of the 2 writers (under 2 MiB before the last one is queued, each bundle under
1 MiB + one file of up to 1 MiB); larger files stream chunk by chunk through two readers' kept buffers (store/repository.py
`ChunkReader`: the caller's and LargeWriter's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from phonevault.store.check import ReadableShards
from phonevault.store.errors import PhonevaultError, UnsafePath
from phonevault.store.history import record_export
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import ChunkReader, Repository
from phonevault.store.trees import FileEntry

from .damage import describe
from .decrypted import write_as_sent
from .errors import StrictRefused, TargetConflict
from .paths import Target, safe_component
from .writeout import FileWriters, LargeWriter, ReadAhead, small_plain, write_large

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(slots=True)
class ExportResult:
    path: Path
    files: int
    bytes: int
    problems: list[str] = field(default_factory=list)  # tree paths refused (never written), each named
    damaged: list[str] = field(default_factory=list)  # files not written: they cannot be read back (one line each)


def export_snapshot(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    dest_root: Path,
    *,
    progress: Progress | None = None,
    strict: bool = False,
) -> ExportResult:
    """Write `dest_root/<UDID>/` bit-for-bit as imported. Built under a temporary name and renamed at the end, so a
    crash never leaves a half-exported folder that looks complete; a failure removes it. The UDID must be one safe
    folder name and every tree path must stay inside the folder (UnsafePath; a refused tree path is named in
    `problems` and the rest is exported). A file that cannot be read back from the vault is named in `damaged` and
    the rest is exported; with `strict`, StrictRefused instead, and nothing is left in the target."""
    write = lambda tmp, target: _export_into(repo, view, snap, tmp, target, progress)  # noqa: E731
    return into_new_folder(repo, view, snap, dest_root, write, strict=strict)


def into_new_folder(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    dest_root: Path,
    write: Callable[[Path, Path], ExportResult],
    *,
    strict: bool,
) -> ExportResult:
    """`dest_root/<UDID>/` made by `write(temporary folder, final folder)` under a temporary name and renamed at the
    end (every export: as imported, or decrypted), so a crash never leaves a half-written folder that looks
    complete and a failure removes it. The target must be absent or an empty real folder."""
    udid = safe_component(view.device or view.key, str(dest_root))
    target = dest_root / udid
    if os.path.islink(target):
        raise TargetConflict(str(target), "is a symbolic link; export into a real folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TargetConflict(str(target), "already exists and is not an empty folder; export into an empty place")
    made_root = not dest_root.exists()
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = dest_root / f".{udid}.phonevault-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        result = write(tmp, target)
        if strict and (result.damaged or result.problems):
            raise StrictRefused(result.problems + result.damaged, "exported")
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_root:  # leave the target as it was: not even the folder this export made for it
            with suppress(OSError):
                dest_root.rmdir()
        raise
    record_export(repo, view, snap, str(target))
    return result


def _export_into(
    repo: Repository, view: DeviceView, snap: SnapshotRecord, tmp: Path, target: Path, progress: Progress | None
) -> ExportResult:
    shards = ReadableShards(repo, view, snap)  # one shard's entries at a time
    damaged: dict[str, str] = {}  # backup path -> why it is not written
    total = shards.size
    done = files = 0
    place = Placement(tmp, target)
    with (
        FileWriters() as writers,
        ReadAhead(repo, small_plain) as ahead,
        ChunkReader(repo) as chunks,
        LargeWriter(repo) as large,
    ):
        for entries in ahead.batches(shards):  # the next batch's small files are read meanwhile (writeout.py)
            repo.cache.trim()  # the cache pages the last batch's lookups mapped (store/residency.py)
            for e in entries:
                if (local := place.file(e)) is None:
                    continue
                try:
                    if e.cipher_key:  # stored decrypted: written encrypted again, as sent (sync/decrypted.py)
                        done += write_as_sent(repo, e, local, writers)
                    elif e.size <= FileWriters.SMALL:
                        data = ahead.take(e)
                        writers.submit(local, e, data)
                        done += len(data)
                    else:  # on the second thread if it is free (writeout.py), else here
                        if not large.offer(e, local):
                            write_large(chunks, e, local, progress, done, total)
                        done += e.size
                except PhonevaultError as exc:  # a chunk that is missing or damaged: this file only
                    damaged[e.path] = str(exc)
                    continue
                files += 1
                if progress:
                    progress(done, total)
        for e, local in large.returned():  # what the second thread could not write: the usual way, or named
            try:
                write_large(chunks, e, local, None, 0, 0)
            except PhonevaultError as exc:
                damaged[e.path] = str(exc)
                files, done = files - 1, done - e.size
    damaged.update(shards.lost)
    place.finish()
    lost = describe(repo, snap, damaged, "exported") if damaged else []
    return ExportResult(target, files, done, place.problems, lost)


class Placement:
    """Where an export (as imported, or decrypted: sync/decrypt_export.py) writes each tree entry in its working
    folder `tmp`, which `into_new_folder` made empty, so nothing in it is a symbolic link (sync/paths.py
    `Target(fresh=True)`). A path that would leave it is refused and named in `problems` as it would read in the
    final folder; folders are made as they come and dated by `finish`, once their files are written."""

    def __init__(self, tmp: Path, target: Path) -> None:
        self._under = Target(tmp, fresh=True)
        self._tmp, self._target = str(tmp), str(target)
        self.problems: list[str] = []
        self._dirs: list[tuple[str, int]] = []  # (folder, mtime_ns)
        self._made: set[str] = set()

    def file(self, e: FileEntry) -> str | None:
        """Where to write file `e` (its folder made), or None: `e` is a folder (made here) or a refused path."""
        try:
            local = self._under.local(e.path)
        except UnsafePath as exc:
            self.problems.append(str(exc).replace(self._tmp, self._target))
            return None
        if e.is_dir:
            os.makedirs(local, exist_ok=True)
            self._dirs.append((local, e.mtime_ns))
            return None
        if (parent := os.path.dirname(local)) not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        return local

    def finish(self) -> None:
        """Give each folder its mtime (writing files into it changed it)."""
        for local, mtime_ns in self._dirs:
            os.utime(local, ns=(mtime_ns, mtime_ns))
