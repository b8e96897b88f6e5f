"""The local LMDB cache: derived data only, sealed, checked against the vault, rebuilt whenever it is missing, stale
or damaged. Deleting it loses nothing.

Lives in `<user cache dir>/phonevault/<repo id>/` (XDG on Linux): the directory 0700, its files 0600. Copies of one
vault (`cp -r`, a restored Time Machine copy) have the same repo id and so share one cache: nothing in it is trusted
for being there (see Trust below), so each copy still sees only itself.

Format (CACHE_FORMAT 2). Every LMDB key is a keyed hash and every value is sealed, so the file shows no UDID, device
name, file name, domain or source path, and a value cannot be moved under another key undetected:
  key    = keyed BLAKE3 (the cache hash key) of `<db> 0x00 <natural key>`, 32 bytes (CacheKey.key)
  value  = nonce (12 random bytes) ‖ AES-256-GCM(the cache encryption key, plaintext, ad = `<db>/` ‖ key) ‖ tag (16)
Both keys are derived from the master secret with HKDF-SHA256 (crypto.CacheKey), apart from the vault's subkeys.
Databases, natural key -> plaintext:
  meta      "format" -> CACHE_FORMAT. A cache without it (an older, plaintext one) is wiped, not read. "stat-format"
            -> derived.STAT_FORMAT: a cache without it, or of another, has its `stat` database emptied on opening.
  blobs     blob id -> msgpack [pack id (32 bytes), offset, length, raw length, type]. The key is the blob id
            itself, already a keyed hash.
  indexes   index object name -> b"": which index objects `blobs` holds.
  segments  (16 bytes of H("segdev", device key)) ‖ (16 bytes of H("segments", name 0x00 size 0x00 first 12
            bytes)) -> the segment's plaintext. The 16-byte device prefix lets one device's entries be scanned.
  stat      a source folder -> msgpack {file name: [stat fields, [chunk ids]]} while that packs into
            derived.STAT_BUCKET_BYTES, else a sorted list of bucket starts ([b"", name, ...]), and
            `<folder> 0x00 <start>` -> the map of the names from that start to the next. Callers pass one file's key,
            `<path> 0x00 <stat fields>` (sync/mobilesync.py makes it); entries are grouped by the path's folder, so
            an unchanged re-import opens about one sealed value per STAT_BUCKET_BYTES of a folder, walked in name
            order, rather than one per file, and a file's newer stat replaces its older one. The bucket being read
            is held decoded (at most ~32 KB packed, ~200 bytes a file), and its folder's list of starts.
  derived   "<kind>/<content id>" -> bytes (a snapshot's catalog, the MBFile decoding memo)
Spools (`Cache.spool()`, store/spool.py): sealed temporary files in the cache directory, unlinked as they are made.
The sidecar file `state` is sealed (ad "cache-state") msgpack [size, mtime ns, ctime ns, inode] of data.mdb as the
last clean close left it.

Trust: what is cached is used only where it provably describes this vault.
  segments  are keyed by what the vault's object is: its name, its listed size and its first 12 bytes — the nonce
            it was sealed with, fresh and random for every object, so they name one sealed object. Reading a log
            costs one listing of the device folder and a 12-byte read per segment; a segment whose key misses is
            fetched, opened and cached, and the device's entries that match no segment of the vault are dropped.
  blobs     index object names are content addresses (index/<pack id>, the pack id a hash of the pack's bytes), so
            a loaded name stands for the right locations; if the cache holds a name the vault lacks, the blob index
            is cleared and reloaded (Repository.sync_index).
  stat      an entry is used only if every chunk it names is in this vault's blob index (writer.put_entry), and a
            commit checks that every pack it reuses exists.
  derived   keyed by content (a Manifest.db's blob ids, an MBFile's hash): the same key always means the same value.

Damage is the cache's, never the vault's: a value that fails to open or decode, or an lmdb.Error, is CacheCorrupt;
the directory is wiped and created anew, `on_reset` reloads the blob index from the vault, the operation goes on, and
`notes` says so in one line. LMDB trusts its file's structure (a damaged B-tree can crash the process, not only
raise), so a data.mdb that differs from what the last clean close recorded in `state` (a crash, or a change made
behind phonevault's back) is verified page by page with py-lmdb's offline verifier before LMDB walks it (~0.4 s per
50 MB); a clean one costs a stat and a small read.

Memory: the blob index lives on disk, memory-mapped; one long-lived read transaction serves lookups. Opening costs
memory proportional to nothing but LMDB's page cache, however large the repository grows. Once a command's misses
pay for it, a 2 MiB filter of the index's ids (residency.IdFilter) answers most misses without the map. The map's
pages a command touched count as its resident memory until `trim` unmaps them (after each shard;
store/residency.py); a write transaction copies the pages it dirties into memory LMDB keeps until the env closes, so
index locations are written INDEX_BATCH at a time in key order and derived values DERIVED_BATCH bytes at a time
(store/derived.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import msgpack

from .backends.local import mkdirs_private
from .crypto import MasterKey
from .derived import DerivedValues, SegmentEntries, StatEntries
from .errors import CacheCorrupt, PhonevaultError
from .index import BlobLocation, PackLocations
from .residency import TRIM_GROWTH, IdFilter, drop, find_map, grown, mark

if TYPE_CHECKING:
    from .spool import Spool

try:  # py-lmdb ≥ 3.0: a pure-Python structural verifier that never hands the file to liblmdb
    from lmdb.verify import verify as _verify_file
except ImportError:  # pragma: no cover - older py-lmdb: damage is caught only where LMDB itself reports it
    _verify_file = None

CACHE_FORMAT = b"2"
MAP_SIZE = 1 << 36  # address space only; the file grows as needed
# Blob locations per write transaction: LMDB keeps a transaction's dirty pages (malloc'd, a leaf per put) until the env
# closes. 4096 kept 8 MB at 30 000 blobs, 20 MB at 1 070 000 (1M files); 1024 keeps 3.6 and 6.7 MB, as fast per put.
INDEX_BATCH = 1024
# The id filter (residency.IdFilter) is built once a command's misses reach 1/FILTER_PAYOFF of the index's entries
# (its build reads every key, ~1 µs each; a miss in LMDB cost ~20 µs at 300 000 files, mostly faulting pages back in).
FILTER_PAYOFF = 16
STATE = "state"
STATE_AD = b"cache-state"
MAX_RESETS = 3  # per process: a cache that keeps failing once rebuilt is a problem of the disk, not of its content
_DBS = (b"meta", b"blobs", b"indexes", b"segments", b"stat", b"derived")
_UNPACK_ERRORS = (ValueError, TypeError, IndexError, AttributeError, msgpack.UnpackException)

_open_here: set[str] = set()  # cache directories open in this process (LMDB refuses a second open of one)
_open_here_lock = threading.Lock()


class Cache(DerivedValues, SegmentEntries, StatEntries):
    """One repository's cache, used from any thread. `_lock` serialises writes and resets, across a commit's fsync;
    `_env_lock` (taken after `_lock`) the env's lifetime: a read transaction's start and `trim` take only it, so
    lookups go on while the pack writer commits (they waited on its fsyncs 24-34 s in a 1 000 000-file import).
    Each thread reads through a transaction of its own (`_read`: one shared one, renewed by a thread after a write,
    was aborted under another thread's lookup, whose LMDB error then wiped the cache as damaged)."""

    def __init__(self, path: Path, key: MasterKey) -> None:
        self.path = path
        self._where = str(path)
        self._ck = key.cache_key()
        self.on_reset: Callable[[], None] | None = None  # the repository reloads what the vault must give back
        self.notes: list[str] = []  # damage found and repaired, one line each
        self._lock, self._env_lock = threading.RLock(), threading.RLock()
        self._reader = threading.local()  # this thread's (read transaction, _gen it began at, env it belongs to)
        # Every live thread's, so closing the env can end them; weak: one goes (with its reader slot) with its thread.
        self._rtxns: weakref.WeakSet[lmdb.Transaction] = weakref.WeakSet()
        self._gen = 0
        self._resets = 0
        self._deferred: CacheCorrupt | None = None  # found on another thread; repaired by the next read
        self._format_key = self._ck.key(b"meta", b"format")
        self._stat_key, self._derived_key = self._ck.hasher(b"stat"), self._ck.hasher(b"derived")
        # The stat bucket last read (folder, _stat_gen, its first name, the next bucket's or None, entries) and the
        # root of its folder (folder, _stat_gen, its entries or its buckets' starts).
        self._folder: tuple[bytes, int, bytes, bytes | None, dict] | None = None
        self._stat_root: tuple[bytes, int, dict | list | None] | None = None
        self._stat_gen = 0  # bumped by every write of stat entries and every reset
        self.env: lmdb.Environment | None = None
        self._map: tuple[int, int] | None = None  # where data.mdb is mapped while `env` is open (`trim`)
        # Blob ids the index may hold (`lookup`), kept up by this process's add_index; valid up to LMDB transaction
        # `_known_txn` (or `_pending_txn`, a write of this process committing): a later one is another process's
        # write, and drops it (`_read`, `_writing`). Misses: lookups LMDB answered None since it was dropped.
        self._filter: IdFilter | None = None
        self._known_txn = self._pending_txn = self._misses = 0
        mkdirs_private(path)
        with contextlib.suppress(OSError):
            if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
                os.chmod(path, 0o700)  # ours alone (a cache dir made by an older phonevault was 0755)
        self._claimed = os.path.realpath(path)
        with _open_here_lock:
            if self._claimed in _open_here:
                raise PhonevaultError(f"local cache {path}: already open in this process (close the other repository)")
            _open_here.add(self._claimed)
        try:
            self._start()
        except BaseException:
            self._release()
            raise

    # --- opening, verifying, wiping ---------------------------------------------------------------------------
    def _start(self) -> None:
        """Open the environment, after wiping it if it is damaged or not of this format."""
        try:
            problem = self._try_open()
        except (lmdb.Error, CacheCorrupt) as e:
            problem = f"unreadable ({_reason(e)})"
        if problem is None:
            return
        if problem != "older format":
            self.notes.append(str(CacheCorrupt(self._where, problem)))
        self._wipe()
        try:
            problem = self._try_open()
        except (lmdb.Error, CacheCorrupt) as e:
            problem = _reason(e)
        if problem is not None:
            raise PhonevaultError(f"local cache {self.path}: cannot be created ({problem})")

    def _try_open(self) -> str | None:
        """Open `self.env`; None if it is a sound cache of this format, else why not (and `self.env` is closed)."""
        suspect = self._changed_since_close()
        self.env = lmdb.open(self._where, map_size=MAP_SIZE, max_dbs=8, readahead=False, mode=0o700)
        problem = self._verify() if suspect else None
        if problem is None:
            self._meta, self._blobs, self._indexes, self._segments, self._stat, self._derived = (
                self.env.open_db(name) for name in _DBS
            )
            with self.env.begin(write=True) as txn:
                raw = txn.get(self._format_key, db=self._meta)
                if raw is None:
                    dbs = (self._blobs, self._indexes, self._segments, self._stat, self._derived, self._meta)
                    if any(txn.stat(db)["entries"] for db in dbs):
                        problem = "older format"
                    else:
                        txn.put(self._format_key, self._seal(b"meta", self._format_key, CACHE_FORMAT), db=self._meta)
                elif self._open(b"meta", self._format_key, raw) != CACHE_FORMAT:
                    problem = "older format"
                if problem is None:
                    self._check_stat_format(txn, self._ck.key(b"meta", b"stat-format"))
        if problem is not None:
            self._close_env()
        return problem

    def _changed_since_close(self) -> bool:
        """Whether data.mdb is not what the last clean close left (then LMDB must not walk it unverified)."""
        try:
            st = os.stat(self.path / "data.mdb")
        except FileNotFoundError:
            return False  # LMDB creates it empty
        try:
            recorded = msgpack.unpackb(self._ck.open((self.path / STATE).read_bytes(), STATE_AD, self._where))
        except (OSError, CacheCorrupt, *_UNPACK_ERRORS):
            return True
        return recorded != [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def _verify(self) -> str | None:
        if _verify_file is None:
            return None
        # A read transaction pins the current snapshot: while it lives, no concurrent writer reuses a page the
        # verifier may be walking, so another process using this cache cannot make it look damaged.
        pin = self.env.begin()
        try:
            problems = _verify_file(self._where)
        except Exception as e:  # the verifier reading a damaged file: however it fails, the file is damaged
            return f"fails verification ({_reason(e)})"
        finally:
            pin.abort()
        return f"fails verification ({problems[0]})" if problems else None

    def _record_state(self) -> None:
        """After a clean close: what data.mdb looks like, so the next open can trust it without verifying."""
        try:
            st = os.stat(self.path / "data.mdb")
            sealed = self._ck.seal(msgpack.packb([st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]), STATE_AD)
            tmp = self.path / f".{STATE}-{os.getpid()}-{threading.get_ident()}"
            with open(tmp, "wb", opener=lambda name, flags: os.open(name, flags, 0o600)) as out:
                out.write(sealed)
            os.replace(tmp, self.path / STATE)
        except OSError:
            pass  # without it the next open verifies the file: slower, never wrong

    def _close_env(self) -> None:
        with self._env_lock:
            self._map = None  # its span may be other memory once it is closed
            self._filter = None  # what it covered is another env's
            for txn in list(self._rtxns):
                txn.abort()  # a thread still holding one gets an lmdb.Error, as on a closed env; it renews at its next read
            self._rtxns.clear()
            if self.env is not None:
                self.env.close()
                self.env = None

    def _wipe(self) -> None:
        self._close_env()
        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PhonevaultError(f"local cache {self.path}: cannot be removed to rebuild it ({e.strerror})") from None
        mkdirs_private(self.path)

    def _recover(self, err: Exception) -> None:
        """The cache failed while in use: wipe it, start empty, and let the repository reload from the vault."""
        with self._lock:
            self._resets += 1
            if self._resets > MAX_RESETS:
                raise PhonevaultError(
                    f"local cache {self.path}: still failing after {MAX_RESETS} rebuilds ({_reason(err)}); "
                    "check the disk, or delete the folder"
                ) from None
            self.notes.append(str(CacheCorrupt(self._where, _reason(err))))
            self._deferred = None
            with self._env_lock:  # no thread begins a read on the new env before its databases are open
                self._wipe()
                self._start()
                self._gen += 1
            self._stat_gen += 1
        if self.on_reset is not None:
            self.on_reset()

    def _release(self) -> None:
        with _open_here_lock:
            _open_here.discard(self._claimed)

    def close(self) -> None:
        with self._lock:
            if self.env is None:
                return
            self._close_env()
            if self._deferred is None:
                self._record_state()
            else:  # LMDB failed and nothing has repaired it yet: the next open must verify the file
                (self.path / STATE).unlink(missing_ok=True)
            self._release()

    # --- sealing ----------------------------------------------------------------------------------------------
    def _seal(self, db: bytes, key: bytes, plain: bytes) -> bytes:
        return self._ck.seal(plain, db + b"/" + key)

    def _open(self, db: bytes, key: bytes, raw: bytes) -> bytes:
        return self._ck.open(raw, db + b"/" + key, self._where)

    def _unpack(self, db: bytes, key: bytes, raw: bytes):
        try:
            return msgpack.unpackb(self._open(db, key, raw))
        except _UNPACK_ERRORS as e:
            raise CacheCorrupt(self._where, f"an entry of {db.decode()} does not decode ({e})") from None

    def _get_sealed(self, db, name: bytes, key: bytes) -> bytes | None:
        """The opened value at `key` of the database `db` (named `name` in the seal), or None: absent, or unreadable
        (the cache is then rebuilt, and a miss is what the caller handles anyway)."""
        try:
            raw = self._read().get(key, db=db)
            return None if raw is None else self._open(name, key, raw)
        except (lmdb.Error, CacheCorrupt) as e:
            self._recover(e)
            return None

    def _read(self) -> lmdb.Transaction:
        """This thread's long-lived read transaction, renewed after any write: a fresh transaction per lookup cost
        ~20 µs, which dominated re-importing a folder of 300 000 small files. Per thread, because a transaction
        must not be aborted while another thread reads through it (see the class docstring)."""
        mine = self._reader.__dict__
        txn = mine.get("txn")
        if txn is not None and mine["gen"] == self._gen and mine["env"] is self.env and self._deferred is None:
            return txn
        if self._deferred is not None:
            raise self._deferred
        with self._env_lock:  # not `_lock`: a write's commit (an fsync) must not hold up a read
            if txn is not None and txn in self._rtxns:  # else the env it belonged to was closed, and it with it
                self._rtxns.discard(txn)
                txn.abort()
            mine["txn"] = txn = self.env.begin()
            mine["gen"], mine["env"] = self._gen, self.env
            self._rtxns.add(txn)
            if self._filter is not None and txn.id() > max(self._known_txn, self._pending_txn):
                self._filter = None  # another process wrote since: maybe index entries this one did not add
        return txn

    def _write(self, fn: Callable[[lmdb.Transaction], None]) -> None:
        """Run `fn` in a write transaction; if the cache fails, rebuild it and run `fn` once more on the new one."""
        for _attempt in range(2):
            try:
                with self._lock:
                    if self._deferred is not None:
                        raise self._deferred
                    with self.env.begin(write=True) as txn:
                        w = self._writing(txn)
                        fn(txn)
                    self._wrote(w)
                    self._gen += 1
                return
            except (lmdb.Error, CacheCorrupt) as e:
                self._recover(e)

    def _writing(self, txn: lmdb.Transaction) -> int:
        """A write begins (under `_lock`): if another process committed since the filter's last, it is dropped."""
        w = self._pending_txn = txn.id()
        if self._filter is not None and w - 1 != self._known_txn:
            self._filter = None
        return w

    def _wrote(self, w: int) -> None:
        """It committed (one that changed nothing left LMDB's last id at w - 1); another process's after it drops the
        filter."""
        last = self.env.info()["last_txnid"]
        if last == w:
            self._known_txn = w
        elif last != w - 1:
            self._filter = None
        self._pending_txn = self._known_txn

    # --- blob index -------------------------------------------------------------------------------------------
    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        # The hot path of an unchanged re-import (one lookup per file): unpacking and opening inlined.
        try:
            txn = self._read()  # first: renewing it may drop the filter
            if (f := self._filter) is not None and not f.may_hold(blob_id):
                return None
            raw = txn.get(blob_id, db=self._blobs)
            if raw is None:
                self._misses += 1
                if self._filter is None and (self._misses & (self._misses - 1)) == 0:
                    self._build_filter()
                return None
            pack, off, length, raw_len, typ = msgpack.unpackb(self._ck.open(raw, b"blobs/" + blob_id, self._where))
            return BlobLocation(pack.hex(), off, length, raw_len, typ)
        except _UNPACK_ERRORS as e:
            self._recover(CacheCorrupt(self._where, f"a blob location does not decode ({e})"))
        except (lmdb.Error, CacheCorrupt) as e:
            self._recover(e)
        return self.lookup(blob_id)

    def _build_filter(self) -> None:
        """The id filter of every key of the index, if the misses so far pay for it (FILTER_PAYOFF). Under `_lock`, not
        waited for (a lookup never waits on a commit), so no add_index commits meanwhile; trimmed as keys map pages."""
        if not self._lock.acquire(blocking=False):  # a write is committing: tried again at a later miss
            return
        try:
            if self._filter is not None or self._deferred is not None or self.env is None:
                return
            with self.env.begin() as txn:
                n = txn.stat(self._blobs)["entries"]
                if n > self._misses * FILTER_PAYOFF:
                    return
                f = IdFilter()
                for i, key in enumerate(txn.cursor(db=self._blobs).iternext(values=False), 1):
                    f.add(key)
                    if i % 1024 == 0:
                        self.trim(TRIM_GROWTH)
                self._filter, self._known_txn, self._misses = f, txn.id(), 0
            self.trim()
        except lmdb.Error as e:
            self._recover(e)
        finally:
            self._lock.release()

    def index_plan(self, present: Iterable[str]) -> tuple[list[str], bool]:
        """Of the vault's index objects `present`: those the blob index lacks, and whether it holds one the vault does
        not (then it is stale: clear it and load them all)."""
        by_key = {self._ck.key(b"indexes", name.encode()): name for name in present}
        try:
            loaded = {bytes(k) for k in self._read().cursor(db=self._indexes).iternext(values=False)}
        except (lmdb.Error, CacheCorrupt) as e:
            self._recover(e)
            return self.index_plan(by_key.values())
        return [name for k, name in by_key.items() if k not in loaded], bool(loaded - by_key.keys())

    def add_index(self, name: str, locations: Mapping[bytes, BlobLocation]) -> None:
        """Record one index object's locations. May run on the pack writer's thread: if LMDB fails here the repair
        waits for the next read; the index object is in the vault already, so a rebuilt cache gets it back. In key
        order, INDEX_BATCH per transaction (the name with the last: a crash between loads the index object again),
        trimmed as the puts map TRIM_GROWTH (fault-around maps ~150 KB a put: 4096 mapped 87 MB at 300 000 files).
        A written pack's locations (packs.PackLocations) are put from its records in id order, one row at a time."""
        key = self._ck.key(b"indexes", name.encode())
        if isinstance(locations, PackLocations):
            pack = bytes.fromhex(locations.pack)
            rows = ((bid, (pack, off, length, raw, typ)) for bid, typ, off, length, raw in locations.by_id())
        else:
            rows = (
                (bid, (bytes.fromhex(loc.pack), loc.offset, loc.length, loc.raw_length, loc.type))
                for bid, loc in sorted(locations.items())
            )
        count = len(locations)
        try:
            with self._lock:
                if self._deferred is not None:
                    return
                for at in range(0, max(count, 1), INDEX_BATCH):
                    with self.env.begin(write=True) as txn:
                        w = self._writing(txn)
                        f = self._filter
                        for n, (bid, value) in enumerate(islice(rows, INDEX_BATCH), 1):
                            if f is not None:
                                f.add(bid)  # before the put is visible: the filter never lacks a held id
                            txn.put(bid, self._seal(b"blobs", bid, msgpack.packb(value)), db=self._blobs)
                            if n % 32 == 0:  # safe mid-transaction: LMDB's dirty pages are copies, not the map's
                                self.trim(TRIM_GROWTH)
                        if at + INDEX_BATCH >= count:
                            txn.put(key, self._seal(b"indexes", key, b""), db=self._indexes)
                    self._wrote(w)
                    self._gen += 1
                    self.trim()
        except lmdb.Error as e:
            self._deferred = CacheCorrupt(self._where, _reason(e))

    def clear_index(self) -> None:
        self._write(lambda txn: (txn.drop(self._blobs, delete=False), txn.drop(self._indexes, delete=False)))

    def trim(self, growth: int = 0) -> None:
        """Unmap the pages of data.mdb this process touched (store/residency.py): commands call it after each shard,
        so the map costs the pages one shard touches, not the whole index; with `growth`, only once the process's
        file-backed resident memory grew that much since the last trim. Under `_env_lock` (not `_lock`, a commit's
        fsync), so the map cannot be closed (a reset) between finding it and dropping its pages."""
        if growth and not grown(growth):
            return
        with self._env_lock:
            if self.env is None:
                return
            self._map = self._map or find_map(str(self.path / "data.mdb"))
            if self._map is not None:
                drop(self._map, str(self.path / "data.mdb"))
            mark()

    def spool(self) -> Spool:
        from .spool import Spool  # noqa: PLC0415  (spool.py builds on this module)

        return Spool(self)


def _reason(e: Exception) -> str:
    return e.reason if isinstance(e, CacheCorrupt) else f"{type(e).__name__}: {e}"
