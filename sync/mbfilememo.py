"""The MBFile memo: what a Manifest.db's rows decoded, kept per device and shard for the next parse of that device's
Manifest.db (sync/catalogshards.py `parse_shards`), and looked up there without unpacking it.

Decoding a row costs ~120 µs and almost every row's archive is the same bytes from one backup to the next, so the
decoded fields are kept per device and shard (MEMO_FORMAT 3): `mbfile-memo/3/<device>/<shard>` -> msgpack [keys,
values, ends], three bins: keys the BLAKE3-128 of each archive (16 bytes each), values each archive's msgpack
[size, mode, mtime, target, protection class, has key, RelativePath] one after the other, ends each value's end
offset in values (uint32 little-endian), all in the order the shard's rows first used them; and
`mbfile-memo/3/<device>` -> msgpack [shard, …] (the shards last written, sorted). A shard's new memo holds only what
that shard's rows used, so it never outgrows one Manifest.db. (MEMO_FORMAT 2 was a msgpack map of the same values:
the parse held the row's shard and the next one unpacked, ~1.5 MB of objects each at 1 000 000 files, made and
dropped a shard at a time.) An old memo of another shape is read as empty: its rows are decoded again.

The parse's child gets the old memo through a sealed, unlinked spool written before it is forked (it must not touch
LMDB), each shard's as the cache holds it (sync/catalogshards.py `ManifestStream`).

Memory: of the old memo, the shard of the row being read and the next one, each as its three bins (~70 bytes a row),
and a sorted index of the first's keys (8 bytes a key) once a row was not found at the next place; the fresh memo of
the shard being read packed the same way (and the last one's, until the parse has sent that shard), and the keys
decoded in it (a dict, all its rows' on a first parse).
"""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator

import msgpack

from phonevault.store.repository import Repository

MEMO_FORMAT = 3


def _memo_head(device_key: str) -> bytes:
    return b"mbfile-memo/%d/" % MEMO_FORMAT + device_key.encode()


def _memo_key(device_key: str, shard: str) -> bytes:
    return _memo_head(device_key) + b"/" + shard.encode(errors="surrogatepass")


class MemoWriter:
    """A parse's new memo into the cache, a shard at a time as it comes, several shards per write transaction (each
    commit is an fsync); the head, naming the shards, last (`finish`)."""

    BATCH = 1 << 20

    def __init__(self, repo: Repository, device_key: str) -> None:
        self._repo, self._device_key = repo, device_key
        self._pending: list[tuple[bytes, bytes]] = []
        self._size = 0
        self.shards: list[str] = []

    def add(self, shard: str, packed: bytes | None) -> None:
        """`packed` None: the shard's memo is the one the cache holds (`parse_shards`), which stays."""
        self.shards.append(shard)
        if packed is None:
            return
        self._pending.append((_memo_key(self._device_key, shard), packed))
        self._size += len(packed)
        if self._size >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        self._repo.cache.derived_put_many(self._pending)  # which unmaps the pages its writes mapped
        self._pending, self._size = [], 0

    def finish(self) -> None:
        self._pending.append((_memo_head(self._device_key), msgpack.packb(self.shards)))
        self._flush()


def old_memo_packed(repo: Repository, device_key: str) -> Iterator[tuple[str, bytes]]:
    """The device's last memo, shard by shard in order, each shard's as the cache holds it (read lazily)."""
    head = repo.cache.derived_get(_memo_head(device_key))
    for shard in msgpack.unpackb(head) if head else ():
        raw = repo.cache.derived_get(_memo_key(device_key, shard))
        if raw is not None:
            yield shard, raw


def unpacked_memo(packed: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, object]]:
    """Each shard's memo unpacked only once it is reached (its three bins; None if it is not msgpack: read as
    empty, as `WindowMemo` reads any other shape)."""
    for shard, raw in packed:
        try:
            yield shard, msgpack.unpackb(raw)
        except (ValueError, TypeError, msgpack.UnpackException):
            yield shard, None


def old_memo(repo: Repository, device_key: str) -> Iterator[tuple[str, object]]:
    """The device's last memo, shard by shard in order (read lazily from the cache)."""
    return unpacked_memo(old_memo_packed(repo, device_key))


class Memo(dict):
    """The previous Manifest.db's decoded rows; remembers in `fresh` every row this parse used or decoded, so the
    stored memo only ever holds one Manifest.db's worth of rows."""

    def __init__(self, old: dict) -> None:
        super().__init__(old)
        self.fresh: dict[bytes, list] = {}

    def get(self, key, default=None):
        value = super().get(key, default)
        if value is not None:
            self.fresh[key] = value
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.fresh[key] = value


_KEY = 16  # bytes of a memo key: an archive's BLAKE3-128
_END = "I"  # array typecode of a value's end offset: 4 bytes, stored little-endian


def _memo_parts(got: object) -> tuple[bytes, bytes, array]:
    """An old shard memo's keys, values and value ends (MEMO_FORMAT 3); an empty memo if it is not that shape (a
    memo the cache holds is still checked: a wrong one only costs decoding its rows again)."""
    ends = array(_END)
    if type(got) is list and len(got) == 3 and all(type(p) is bytes for p in got):
        keys, values, raw_ends = got
        if len(keys) % _KEY == 0 and len(raw_ends) == len(keys) // _KEY * ends.itemsize:
            ends.frombytes(raw_ends)
            if sys.byteorder != "little":
                ends.byteswap()
            return keys, values, ends
    return b"", b"", array(_END)


def _packed_memo(keys: bytes | bytearray, values: bytes | bytearray, ends: array) -> bytes:
    """A shard memo as the cache holds it (the bytes msgpack.packb gives for [keys, values, ends])."""
    if sys.byteorder != "little":
        ends = array(_END, ends)
        ends.byteswap()
    raw_ends = ends.tobytes()
    parts = (keys, values, raw_ends)
    return b"".join((b"\x93", *(x for part in parts for x in (bin_header(len(part)), part))))


def _key_index(keys: bytes) -> array:
    """Each key's first 4 bytes (uniform: a hash) << 32 | its index, sorted, so that `bisect` finds a key in C."""
    firsts = array(_END, keys)[:: _KEY // 4]
    return array("Q", sorted((h << 32) | i for i, h in enumerate(firsts)))


class WindowMemo:
    """The memo `read_manifest_db` asks (`get`, and set with what a row decoded), told each row's fileID first
    (`at_row`): the old memo's shard of that row, packed as the cache holds it, and the shard's fresh memo packed as
    its rows use or decode values (`take`). A lookup tries the entry after the last one found (rows keep their
    order from one backup to the next, and a memo lists its values in the order its rows first used them), else a
    sorted index of the shard's keys made at its first such miss (a changed row's, usually). A found value is
    unpacked for the row that asked, and copied packed into the fresh memo."""

    def __init__(self, old: Iterator[tuple[str, object]], shard_of: Callable[[str], str]) -> None:
        self._old, self._shard_of = old, shard_of
        self._next = next(old, None)  # the first old shard not reached yet (the old memo comes in shard order)
        self._done: list[tuple[str, bytes | None]] = []  # fresh memos of shards passed, not yet taken
        self._shard: str | None = None
        self._start(None)

    def _start(self, shard: str | None) -> None:
        while self._next is not None and shard is not None and self._next[0] < shard:
            self._next = next(self._old, None)
        got = None
        if self._next is not None and self._next[0] == shard:
            got, self._next = self._next[1], next(self._old, None)
        self._shard = shard
        self._keys, self._values, self._ends = _memo_parts(got)
        self._cursor, self._index = 0, None
        self._used, self._unused = bytearray(len(self._ends)), len(self._ends)
        self._new: dict[bytes, int] = {}  # keys decoded here (not in the old shard), with their place in the fresh
        self._fkeys, self._fvalues, self._fends = bytearray(), bytearray(), array(_END)

    def _fresh(self) -> bytes | None:
        """The shard's fresh memo, packed; None if it is the old one (each old value used, nothing decoded)."""
        if not self._new and not self._unused:
            return None
        return _packed_memo(self._fkeys, self._fvalues, self._fends)

    def at_row(self, file_id: str) -> None:
        """The next lookup is for a row of this fileID (rows come in fileID order, hence in shard order)."""
        shard = self._shard_of(file_id)
        if shard != self._shard:
            if self._shard is not None:
                self._done.append((self._shard, self._fresh()))
            self._start(shard)

    def take(self, shard: str) -> bytes | None:
        """`shard`'s fresh memo packed (None: the old one stays), once its rows are read; shards before it whose
        rows were all unusable have theirs dropped."""
        while self._done and self._done[0][0] < shard:
            self._done.pop(0)
        if self._done and self._done[0][0] == shard:
            return self._done.pop(0)[1]
        return self._fresh() if shard == self._shard else None

    def _find(self, key: bytes) -> int:
        i, n = self._cursor, len(self._ends)
        if i < n and self._keys.startswith(key, i * _KEY):
            self._cursor = i + 1
            return i
        if not n or len(key) != _KEY:
            return -1
        if self._index is None:
            self._index = _key_index(self._keys)
        h = int.from_bytes(key[:4], sys.byteorder)
        p = bisect.bisect_left(self._index, h << 32)
        while p < n and self._index[p] >> 32 == h:
            i = self._index[p] & 0xFFFFFFFF
            if self._keys.startswith(key, i * _KEY):
                self._cursor = i + 1
                return i
            p += 1
        return -1

    def get(self, key: bytes, default: list | None = None) -> list | None:
        i = self._find(key)
        if i < 0:
            j = self._new.get(key)
            if j is None:
                return default
            values, ends = self._fvalues, self._fends
        else:
            values, ends = self._values, self._ends
            j = i
        value = values[ends[j - 1] if j else 0 : ends[j]]
        try:
            hit = msgpack.unpackb(value)
        except (ValueError, TypeError, msgpack.UnpackException):
            return default
        if type(hit) is not list or len(hit) != 7:
            return default
        if i >= 0 and not self._used[i]:
            self._used[i] = 1
            self._unused -= 1
            self._add(key, value)
        return hit

    def __setitem__(self, key: bytes, value: list) -> None:
        self._new[key] = len(self._fends)
        self._add(key, msgpack.packb(value))

    def _add(self, key: bytes, value: bytes) -> None:
        if len(self._fvalues) + len(value) > 0xFFFFFFFF:  # past a 4-byte end: the value stays out of the memo
            self._new.pop(key, None)
            return
        self._fkeys += key
        self._fvalues += value
        self._fends.append(len(self._fvalues))


def bin_header(n: int) -> bytes:
    """msgpack's bin header for `n` bytes, the smallest one, as `packb` writes it (msgpack.Packer has none)."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    return b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big")
