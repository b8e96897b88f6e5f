"""The repository: opens config and keys, reads blobs and event logs, appends events. Everything else builds on it.

config (version 1) is sealed with ad=b"phonevault/v1/config": msgpack {"version", "id", "created", "chunker"}.
Reads go: blob id -> LMDB cache (synced with index/ on open) -> one ranged read of a pack -> open + verify. A blob
a snapshot needs but the cache does not know is looked for again after reloading the blob index from the vault (once
per repository), so a cache that lost an entry is never reported as a missing object. Many blobs at once
(export's small files: sync/writeout.py `read_located`) are read in (pack, offset) order, neighbours merged.
Event logs are read incrementally: a segment is used from the cache only if its cached copy was made from the very
object the vault holds now (same name, size and first 12 bytes, its nonce; see cache.py), which costs a listing and a
12-byte read per segment; otherwise it is fetched and opened again.
A segment that is damaged, or lost (a seq missing below the last one), is named (`warnings`, `damaged_segments`) and
skipped; every segment after it is still folded. Damage behind an intact cached copy is not seen here (the copy is
used): `check` reads every segment from the vault.
"""

from __future__ import annotations

import mmap
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import platformdirs
import zstandard

from . import keys as keyring
from .backends import Backend
from .backends.local import LocalBackend
from .backends.readonly import ReadOnlyBackend
from .cache import Cache
from .chunker import PROFILES
from .crypto import NONCE_LEN, OVERHEAD, MasterKey
from .errors import (
    ConcurrentCommit,
    CorruptObject,
    MissingObject,
    ObjectExists,
    PhonevaultError,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
)
from .events import Event, decode_events, parse_segment_name, seal_segment, segment_name
from .index import decode_index
from .packs import STORED, ZSTD, BlobLocation, open_blob, pack_name
from .projections import DeviceView, project
from .trees import FileEntry

CONFIG_FORMAT = 1
PACK_MOVED_RETRIES = 3  # a prune repacks a pack at most once per run; three runs while one blob is read is plenty
INDEX_RELISTS = 3  # likewise for an index object a prune deletes between a listing and its read
# The cache's mapped pages (store/residency.py), one policy: every TRIM_LOOKUPS lookups, unmapped if file-backed
# memory grew TRIM_GROWN (a large index: ~150 KB a lookup, ≤ ~5 MB mapped; a small one, mapped already: never).
TRIM_LOOKUPS = 32
TRIM_GROWN = 1 << 20
CONFIG_AD = b"phonevault/v1/config"


def now_us() -> int:
    return time.time_ns() // 1000


def format_time(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Config:
    version: int
    id: str
    created: int
    chunker: dict


def default_cache_root() -> Path:
    return Path(os.environ.get("PHONEVAULT_CACHE_DIR") or platformdirs.user_cache_dir("phonevault"))


class Repository:
    def __init__(self, backend: Backend, key_id: str, key: MasterKey, config: Config, cache: Cache) -> None:
        self.backend = backend
        self.key_id = key_id
        self.key = key
        self.config = config
        self.cache = cache
        self.warnings: list[str] = []  # damage met while reading; the CLI prints them and exits non-zero
        self._views: dict[str, DeviceView] = {}
        self._damaged: dict[str, list[str]] = {}
        self._index_reloaded = False  # the blob index was reloaded from the vault after a miss (once is enough)
        self._lookups = 0  # `locate_needed` calls (the trim policy: TRIM_LOOKUPS)
        cache.on_reset = self.sync_index  # a damaged cache starts empty: the blob index comes back from the vault

    # --- lifecycle --------------------------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        *,
        scrypt_n: int = keyring.DEFAULT_SCRYPT_N,
        cache_root: Path | None = None,
    ) -> Repository:
        if backend.exists("config"):
            raise RepositoryExists(backend.location)
        if isinstance(backend, LocalBackend) and backend.root.exists() and any(backend.root.iterdir()):
            raise RepositoryNotFound(backend.location, "directory exists and is not empty; refusing to init here")
        master = MasterKey.generate()
        cfg = {
            "version": CONFIG_FORMAT,
            "id": secrets.token_hex(16),
            "created": now_us(),
            "chunker": {name: p.to_config() for name, p in PROFILES.items()},
        }
        key_id = keyring.add_key(backend, master, password, scrypt_n)
        backend.put_exclusive("config", master.seal(msgpack.packb(cfg), CONFIG_AD))
        return cls.open(backend, password, cache_root=cache_root, unlocked=(key_id, master))

    @classmethod
    def open(
        cls,
        backend: Backend,
        password: str,
        *,
        cache_root: Path | None = None,
        unlocked: tuple[str, MasterKey] | None = None,
    ) -> Repository:
        """`unlocked`: the (key id, master key) `init` has just wrapped under `password`; unwrapping it again would
        cost one more scrypt (~0.1 s of a `copy --init`)."""
        if not backend.exists("config"):
            raise RepositoryNotFound(backend.location)
        key_id, master = unlocked or keyring.unlock(backend, password)
        try:
            raw = msgpack.unpackb(master.open(backend.get("config"), CONFIG_AD, "config"))
            config = Config(raw["version"], raw["id"], raw["created"], raw["chunker"])
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
            raise CorruptObject("config", str(e)) from None
        if config.version != CONFIG_FORMAT:
            raise UnsupportedFormat("config", config.version)
        expected = {name: p.to_config() for name, p in PROFILES.items()}
        if config.chunker != expected:
            raise UnsupportedFormat("config (chunker parameters)", config.chunker)
        cache = Cache((cache_root or default_cache_root()) / config.id, master)
        repo = cls(backend, key_id, master, config, cache)
        try:
            repo.sync_index()
        except BaseException:
            cache.close()
            raise
        return repo

    def close(self) -> None:
        self.cache.close()
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- blob index and reads ---------------------------------------------------------------------------------
    @property
    def notes(self) -> list[str]:
        """Harmless findings, one line each: a local cache found damaged and rebuilt from the vault."""
        return self.cache.notes

    def sync_index(self) -> None:
        """Load index objects the cache has not seen; rebuild from scratch if it holds one the vault lacks (a prune,
        or another copy of this vault sharing the cache, or an older copy restored in its place). One listed, then
        gone, was deleted by a prune, which first indexed the pack it moved the blobs to: listed again."""
        bad: set[str] = set()  # undecodable: reported once, not read again on a second listing
        for _relist in range(INDEX_RELISTS + 1):
            present = [name for name, _ in self.backend.list("index/")]
            todo, stale = self.cache.index_plan(present)
            if stale:
                self.cache.clear_index()
                todo = present
            gone: list[str] = []
            for name in sorted(set(todo) - bad):
                try:
                    self.cache.add_index(name, decode_index(self.key, name, self.backend.get(name)))
                except MissingObject as e:
                    gone.append(str(e))
                except (CorruptObject, UnsupportedFormat) as e:
                    bad.add(name)
                    self.warnings.append(str(e))
            if not gone:
                return
        self.warnings.extend(gone)

    def locate(self, blob_id: bytes) -> BlobLocation | None:
        """Where a blob is, per the cache; None for a blob never stored (the writer's question, asked for every
        chunk, so a miss here is cheap and final)."""
        return self.cache.lookup(blob_id)

    def locate_needed(self, blob_id: bytes) -> BlobLocation | None:
        """Where a blob that something committed refers to is. A miss is checked against the vault by reloading the
        blob index from its index objects (once per repository), so a cache that lost an entry (a damaged key in
        data.mdb) is never taken for a blob missing from the vault. Every TRIM_LOOKUPS calls the cache's pages are
        unmapped if they grew TRIM_GROWN: each lookup maps ~150 KB of a large index (the kernel's fault-around), and
        a reader of thousands of chunks (check's walk; a 1 000 000-file phone's Manifest.db exported a chunk at a
        time) would otherwise keep a map growing with the phone's files: 54 MB of data.mdb at 300 000 files."""
        self._lookups += 1
        if self._lookups % TRIM_LOOKUPS == 0:
            self.cache.trim(TRIM_GROWN)
        loc = self.cache.lookup(blob_id)
        if loc is None and not self._index_reloaded:
            self._index_reloaded = True
            self.cache.clear_index()
            self.sync_index()
            loc = self.cache.lookup(blob_id)
        return loc

    def get_blob(self, blob_id: bytes) -> bytes:
        """A blob's plaintext. A reader does not register with prune, so the pack it was told of may be repacked
        and deleted while it reads (prune copies live blobs to a new pack first, and writes that pack's index
        before deleting the old one): a vanished pack reloads the index and is looked up again, a few times."""
        sealed, name = self.sealed_blob(blob_id)
        return open_blob(self.key, blob_id, sealed, name)

    def sealed_blob(self, blob_id: bytes, loc: BlobLocation | None = None) -> tuple[bytes, str]:
        """A blob's sealed bytes and the pack they are in, a move by prune retried as `get_blob` says (`loc`: where
        the caller already found it)."""
        for attempt in range(PACK_MOVED_RETRIES + 1):
            if loc is None:
                loc = self.locate_needed(blob_id)
            if loc is None:
                raise MissingObject(f"blob {blob_id.hex()}", "not in any index")
            name = pack_name(loc.pack)
            try:
                return self.backend.get_range(name, loc.offset, loc.length), name
            except MissingObject:
                if attempt == PACK_MOVED_RETRIES or self.backend.exists(name):
                    raise  # gone for good, or there but short: damage, not a move
                self.sync_index()
                loc = None
        raise AssertionError("unreachable")

    def read_file(self, entry: FileEntry) -> Iterator[bytes]:
        for chunk in entry.chunks:
            yield self.get_blob(chunk)

    # --- event logs -------------------------------------------------------------------------------------------
    def device_keys(self) -> list[str]:
        keys = set()
        for name, _ in self.backend.list("events/"):
            parsed = parse_segment_name(name)
            if parsed:
                keys.add(parsed[0])
        return sorted(keys)

    def _segments(self, device_key: str) -> Iterator[tuple[int, list[Event]]]:
        sizes = {
            p[1]: size for name, size in self.backend.list(f"events/{device_key}/") if (p := parse_segment_name(name))
        }
        # Appends take seq after seq (put_exclusive of last + 1), so a seq missing below the last one is a segment
        # lost from the vault, not one never written: name it; the segments after it are folded all the same.
        damaged = [
            str(MissingObject(segment_name(device_key, seq), "lost from the vault (later segments exist)"))
            for seq in range(max(sizes, default=-1))
            if seq not in sizes
        ]
        current: list[bytes] = []  # cache keys of the segments the vault holds now
        missed = False
        for seq in sorted(sizes):
            name = segment_name(device_key, seq)
            try:
                events, cache_key, hit = self._read_segment(device_key, name, sizes[seq])
            except (CorruptObject, UnsupportedFormat, MissingObject) as e:
                damaged.append(str(e))
                # keep the seq counted so no writer reuses it
                yield seq, []
                continue
            current.append(cache_key)
            missed |= not hit
            yield seq, events
        if missed:  # the cache disagreed with the vault somewhere: drop this device's entries of other objects
            self.cache.retain_segments(device_key, current)
        self._damaged[device_key] = damaged
        for d in damaged:
            if d not in self.warnings:
                self.warnings.append(d)

    def _read_segment(self, device_key: str, name: str, size: int) -> tuple[list[Event], bytes, bool]:
        """A segment's events, its cache key, and whether the cache had them. The cached copy is used only if it was
        made from the object the vault holds now: same name, size and nonce."""
        if size >= OVERHEAD:
            key = self.cache.segment_key(device_key, name, size, self.backend.get_range(name, 0, NONCE_LEN))
            if (plain := self.cache.segment(key)) is not None:
                try:
                    return decode_events(plain, name), key, True
                except (CorruptObject, UnsupportedFormat):
                    pass  # the cached copy is wrong, not the vault's object: read that
        sealed = self.backend.get(name)
        plain = self.key.open(sealed, name.encode(), name)
        events = decode_events(plain, name)
        key = self.cache.segment_key(device_key, name, len(sealed), sealed[:NONCE_LEN])
        self.cache.put_segment(key, plain)
        return events, key, False

    def view(self, device_key: str, *, refresh: bool = False) -> DeviceView:
        if refresh or device_key not in self._views:
            self._views[device_key] = project(device_key, self._segments(device_key))
        return self._views[device_key]

    def damaged_segments(self, device_key: str) -> list[str]:
        self.view(device_key)
        return self._damaged.get(device_key, [])

    def devices(self) -> list[DeviceView]:
        return [self.view(k) for k in self.device_keys()]

    def device_key(self, device: str) -> str:
        return self.key.name_hash(device)

    def append(self, device_key: str, events: list[Event], *, expect_head: bytes | None | type = ...) -> int:
        """Append one segment (one commit) to a device log; returns its seq.

        Losing the put_exclusive race re-reads the log and retries, unless `expect_head` is given and the head moved
        meanwhile: then the commit was staged on a stale parent and ConcurrentCommit is raised."""
        for _attempt in range(100):
            view = self.view(device_key, refresh=True)
            if expect_head is not ... and view.head != expect_head:
                raise ConcurrentCommit(view.device or device_key)
            seq = view.last_seq + 1
            name = segment_name(device_key, seq)
            try:
                self.backend.put_exclusive(name, seal_segment(self.key, name, events))
            except ObjectExists:
                continue
            self._views.pop(device_key, None)
            return seq
        raise PhonevaultError(f"could not append to the log of {device_key}: too much contention")

    def snapshot_record(self, device_key: str, snapshot: bytes):
        rec = self.view(device_key).get(snapshot)
        if rec is None:
            raise MissingObject(f"snapshot {snapshot.hex()}")
        return rec


class ChunkReader:
    """A large file's chunks one after another (export, extract), each opened (MasterKey.open_into) into a buffer
    kept from chunk to chunk and file to file. `get_blob` made four fresh copies of every chunk (the read, the
    joined ciphertext, the plaintext, the payload after the flag), up to 8 MiB each, which glibc then kept in its
    heaps; here a chunk is read into a kept buffer too (a local vault: `PackFiles.read_into`, through a descriptor of
    the reader's own; else `bytes`), and a compressed chunk is decompressed into one more (zstd frames carry their
    size). The next chunk is not read here, but the kernel is told to read it (`will_need`) while this one is
    opened and written: its own read-ahead follows one pack, and a file's next chunk is often the first of the next
    pack. A local vault's chunk is opened in place (GCM writes each byte over its ciphertext): one 8 MiB buffer less.
    Memory: the largest sealed and decompressed chunk (each rounded up to 1 MiB; a vault elsewhere: and the opened
    chunk) while a file is read, given back after it.
    Errors are `get_blob`'s (a moved pack is retried, a missing or damaged chunk raises), raised for the chunk they
    concern, when it is reached."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._sealed = _NO_BUFFER  # the current chunk as stored (a local vault's, read into it)
        self._opened = _NO_BUFFER  # flag || payload of the current chunk
        self._raw = _NO_BUFFER  # a compressed chunk's plaintext
        self._dctx = zstandard.ZstdDecompressor()  # this reader's own: a zstd context is not thread-safe
        self._packs = PackFiles(repo.backend)  # its own descriptor: a reader may run on a thread of its own

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sealed = self._opened = self._raw = _NO_BUFFER
        self._packs.close()

    def pieces(self, entry: FileEntry) -> Iterator[memoryview]:
        """Each chunk's plaintext in order, as a view that is valid until the next one is asked for. The buffers'
        pages go back to the system once the file is read (an export's small files between two large ones then do
        not sit on top of them): faulting them in again costs once per large file, not once per chunk."""
        return self._pieces(entry.chunks, [self._repo.locate_needed(c) for c in entry.chunks[:1]])

    def located_pieces(self, entry: FileEntry, located: list[BlobLocation]) -> Iterator[memoryview]:
        """`pieces` of chunks already located (`located[i]` is where `entry.chunks[i]` is), touching no cache, so
        on any thread; a chunk that cannot be read here as located raises NotReadHere (the caller reads the file
        the usual way, which retries a pack moved by prune and names damage)."""
        return self._pieces(entry.chunks, located, here=True)

    def _pieces(self, chunks: tuple, located: list, here: bool = False) -> Iterator[memoryview]:
        try:
            ahead = located[0] if chunks else None
            for i, blob_id in enumerate(chunks):
                loc = ahead
                if i + 1 < len(chunks):
                    ahead = located[i + 1] if here else self._repo.locate_needed(chunks[i + 1])
                    if ahead is not None:
                        self._packs.will_need(ahead)  # read by the kernel while this chunk is opened and written
                yield self._open(blob_id, loc, here)
        finally:
            for buf in (self._sealed, self._opened, self._raw):
                if len(buf):
                    buf.madvise(mmap.MADV_DONTNEED)

    def _open(self, blob_id: bytes, loc: BlobLocation | None = None, here: bool = False) -> memoryview:
        if loc is not None and len(self._sealed) < loc.length:
            self._sealed = _buffer(loc.length)
        if loc is None or (sealed := self._packs.read_into(loc, self._sealed)) is None:
            if here:
                raise NotReadHere(blob_id.hex())
            sealed, name = self._repo.sealed_blob(blob_id, loc)
            n = len(sealed) - OVERHEAD
            if len(self._opened) < n + 15:  # a new buffer, never resized: the caller may hold a view of the old
                self._opened = _buffer(n + 15)
            opened = memoryview(self._opened)
        else:  # opened in place: GCM writes each byte where its ciphertext was, the tag after it left alone
            name, n = pack_name(loc.pack), len(sealed) - OVERHEAD  # n + 15 bytes of room: buffer >= loc.length
            opened = memoryview(self._sealed)[NONCE_LEN:]
        self._repo.key.open_into(sealed, blob_id, name, opened)
        del sealed
        view = opened[:n]
        if n and view[0] == STORED[0]:
            return view[1:]
        if n and view[0] == ZSTD[0]:
            return self._decompress(blob_id, view[1:], name)
        raise CorruptObject(name, f"blob {blob_id.hex()[:16]} has unknown flag {bytes(view[:1])!r}")

    def _decompress(self, blob_id: bytes, frame: memoryview, name: str) -> memoryview:
        try:
            size = zstandard.frame_content_size(frame)
            if size < 0:  # a frame without its size (none phonevault writes): the plain way
                return memoryview(self._dctx.decompress(frame))
            if len(self._raw) < size + 1:
                self._raw = _buffer(size + 1)
            out, got = memoryview(self._raw), 0
            reader = self._dctx.stream_reader(frame)
            while got <= size and (step := reader.readinto(out[got : size + 1])):
                got += step
        except zstandard.ZstdError as e:
            raise CorruptObject(name, f"blob {blob_id.hex()[:16]} does not decompress: {e}") from None
        if got != size:
            raise CorruptObject(name, f"blob {blob_id.hex()[:16]} decompresses to {got} bytes, its frame says {size}")
        return out[:size]


class NotReadHere(Exception):
    """A chunk `ChunkReader.located_pieces` cannot read as located (not a local vault, a moved pack, a short read)."""


class PackFiles:
    """A local vault's pack files read through one kept descriptor, of the last pack used (one holder per thread)."""

    def __init__(self, backend: Backend) -> None:
        if isinstance(backend, ReadOnlyBackend):  # a read-only view of a local vault (not a faulty one: its faults)
            backend = backend.inner
        self._root = backend.root if isinstance(backend, LocalBackend) else None
        self._fd: tuple[str, int] | None = None  # (pack, descriptor)

    def will_need(self, loc: BlobLocation) -> None:
        """Ask the kernel to read a blob's bytes into the page cache now, without waiting (elsewhere: nothing): a
        reader that handles one chunk before it reads the next (ChunkReader) then finds the next one read while it
        decrypted and wrote this one."""
        if (fd := self._open(loc)) is not None and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, loc.offset, loc.length, os.POSIX_FADV_WILLNEED)

    def read_into(self, loc: BlobLocation, buf: mmap.mmap) -> memoryview | None:
        """A blob read (`preadv`) into the caller's kept buffer: no fresh `bytes` of up to 8 MiB per chunk for
        glibc's heaps to keep. None where that is not possible (not a local vault, a pack moved by prune, a short
        read): the caller reads it with `Repository.sealed_blob`."""
        view = memoryview(buf)[: loc.length]
        try:
            if (fd := self._open(loc)) is None or os.preadv(fd, [view], loc.offset) != loc.length:
                return None
        except OSError:
            return None
        return view

    def _open(self, loc: BlobLocation) -> int | None:
        if self._root is None:
            return None
        name = pack_name(loc.pack)
        if self._fd is None or self._fd[0] != name:
            self.close()
            try:
                self._fd = (name, os.open(self._root / name, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:  # a pack moved by prune: the read that follows retries it
                return None
        return self._fd[1]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd[1])
            self._fd = None


def _buffer(n: int) -> mmap.mmap:
    """A kept buffer of at least n bytes (rounded up to 1 MiB, so chunks of nearly one size share one): an anonymous
    map, whose pages are taken as they are written and given back by madvise, whatever glibc's heaps hold."""
    return mmap.mmap(-1, -(-n // (1 << 20)) << 20)


_NO_BUFFER = b""  # no buffer yet: len 0, never written
