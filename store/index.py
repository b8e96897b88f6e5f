"""index/<pack-id>: the blob locations of one pack, so opening a repository never reads packs.

Format (version 1): sealed (ad=b"phonevault/v1/index") msgpack [1, pack id, [[blob id, type, offset, length,
raw length], …]]. One index object per pack, written right after its pack: a crash between the two leaves a pack
no index describes: harmless (check notes it, prune reclaims it). A missing, damaged or wrong index object is written
again from its pack's header by `check --repair-index` (store/repair.py).

A pack's blob locations, as its writer records them and a written pack passes them on (PackLocations): one RECORD a
blob in one bytearray, found by an open-addressing table of record numbers (4 bytes a slot, ≤ 1/4 of the slots full);
the header's entries are packed from them once, and this pack's index object repeats those bytes.
Memory: 73 to 89 bytes a blob (57 of record, 16 to 32 of table), against ~250 with a dict of id -> record number and
its ids beside the records; a written pack's packed entries ~45 more.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgpack

from .backends import Backend
from .crypto import MasterKey
from .errors import CorruptObject, MissingObject, UnsupportedFormat

INDEX_FORMAT = 1
INDEX_AD = b"phonevault/v1/index"
RECORD = struct.Struct("<32sBQQQ")  # a blob as its pack's writer records it: id, type, offset, length, raw length


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where a blob lives: what an index entry says."""

    pack: str
    offset: int
    length: int
    raw_length: int
    type: int


def pack_entries(rows: Iterable[tuple[bytes, int, int, int, int]], count: int) -> bytearray:
    """`msgpack.packb` of the list of `count` rows [blob id, type, offset, length, raw length], a row at a time: a pack
    header's entries, which its index object repeats (as lists a row cost ~300 bytes, and were built three times)."""
    packer = msgpack.Packer(buf_size=256)  # a row at a time: the output alone is held, not a packer's 256 KiB more
    out = bytearray(packer.pack_array_header(count))
    for row in rows:
        out += packer.pack(row)  # a tuple packs as the array a list does
    return out


class PackLocations(Mapping[bytes, BlobLocation]):
    """A pack's blobs by id (see the module docstring), in pack order. Filled by one thread (`add`, PackWriter's
    caller), read by any: a record is appended before its slot is set, and a grown table replaces the old whole.
    Once the pack is written, `pack` names it and `entries` holds its header's packed entries."""

    __slots__ = ("pack", "entries", "_records", "_slots", "_ids")

    def __init__(self) -> None:
        self.pack, self.entries = "", b""
        self._records, self._slots, self._ids = bytearray(), array("I", bytes(256)), 0  # slot: record number + 1

    def __len__(self) -> int:
        return self._ids  # distinct ids, as a dict's keys

    @property
    def records(self) -> int:
        return len(self._records) // RECORD.size

    def _find(self, blob_id: bytes) -> tuple[int, int]:
        """(the slot of `blob_id`, or the free one where it would go; its record number, or -1). Ids are keyed hashes:
        their first 8 bytes spread them evenly."""
        slots, records = self._slots, self._records
        mask = len(slots) - 1
        i = int.from_bytes(blob_id[:8], "little") & mask
        while v := slots[i]:
            at = (v - 1) * RECORD.size
            if records[at : at + 32] == blob_id:
                return i, v - 1
            i = (i + 1) & mask
        return i, -1

    def add(self, blob_id: bytes, blob_type: int, offset: int, length: int, raw_length: int) -> None:
        """Append a blob's record; an id added again is found at its last record (as a dict would keep it)."""
        slot, n = self._find(blob_id)
        self._records += RECORD.pack(blob_id, blob_type, offset, length, raw_length)
        self._ids += n < 0
        self._slots[slot] = self.records
        if 4 * self._ids > len(self._slots):
            slots = array("I", bytes(8 * len(self._slots)))  # twice as many, filled anew
            mask = len(slots) - 1
            for v in filter(None, self._slots):
                i = int.from_bytes(self._records[(v - 1) * RECORD.size : (v - 1) * RECORD.size + 8], "little") & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = v
            self._slots = slots

    def row(self, blob_id: bytes) -> tuple[bytes, int, int, int, int] | None:
        n = self._find(blob_id)[1]
        return None if n < 0 else RECORD.unpack_from(self._records, n * RECORD.size)

    def rows(self) -> Iterator[tuple[bytes, int, int, int, int]]:
        """Every record (id, type, offset, length, raw length), in pack order."""
        return RECORD.iter_unpack(self._records)

    def __contains__(self, blob_id: object) -> bool:
        """A blob sink asks this of its open and in-flight packs at every put: mostly no, at the first slot."""
        if not isinstance(blob_id, bytes):
            return False
        slots = self._slots
        return bool(slots[int.from_bytes(blob_id[:8], "little") & (len(slots) - 1)]) and self._find(blob_id)[1] >= 0

    def __getitem__(self, blob_id: bytes) -> BlobLocation:
        if (row := self.row(blob_id) if isinstance(blob_id, bytes) else None) is None:
            raise KeyError(blob_id)
        return BlobLocation(self.pack, row[2], row[3], row[4], row[1])

    def __iter__(self) -> Iterator[bytes]:
        return (row[0] for row in self.rows())

    def items(self) -> ItemsView[bytes, BlobLocation]:
        return _Items(self)

    def by_id(self) -> Iterator[tuple[bytes, int, int, int, int]]:
        """The rows in id order, as LMDB keys them: record numbers bucketed by the id's first byte (4 bytes a blob),
        each bucket sorted when reached (~1/256 of the rows' keys at once)."""
        records, size = self._records, RECORD.size
        buckets = [array("I") for _ in range(256)]
        for n in range(self.records):
            buckets[records[n * size]].append(n)
        for bucket in buckets:
            for n in sorted(bucket, key=lambda n: records[n * size : n * size + 32]):
                yield RECORD.unpack_from(records, n * size)


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[bytes, BlobLocation]]:
        pack = self._mapping.pack
        return ((b, BlobLocation(pack, o, n, r, t)) for b, t, o, n, r in self._mapping.rows())


def index_name(pack_id: str) -> str:
    return f"index/{pack_id}"


def write_index(backend: Backend, key: MasterKey, pack_id: str, locations: Mapping[bytes, BlobLocation]) -> str:
    """`locations`: a written pack's (PackWriter.finish), whose header's packed entries are the index's too, or any
    map of one pack's blobs (a header read back, `check --repair-index`), whose entries are packed in its order."""
    if isinstance(locations, PackLocations) and locations.pack == pack_id:
        entries = locations.entries
    else:
        rows = ((bid, loc.type, loc.offset, loc.length, loc.raw_length) for bid, loc in locations.items())
        entries = pack_entries(rows, len(locations))
    head = msgpack.packb([INDEX_FORMAT, pack_id, []])[:-1]  # the plaintext up to its entries
    name = index_name(pack_id)
    backend.put(name, key.seal_flagged(head, entries, INDEX_AD))  # msgpack [INDEX_FORMAT, pack id, entries]
    return name


def decode_index(key: MasterKey, name: str, sealed: bytes) -> dict[bytes, BlobLocation]:
    plain = key.open(sealed, INDEX_AD, name)
    try:
        fmt, pack_id, entries = msgpack.unpackb(plain)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObject(name, f"unreadable index: {e}") from None
    if fmt != INDEX_FORMAT:
        raise UnsupportedFormat(name, fmt)
    try:
        return {bytes(e[0]): BlobLocation(pack_id, e[2], e[3], e[4], e[1]) for e in entries}
    except (TypeError, IndexError) as e:
        raise CorruptObject(name, f"malformed index entry: {e}") from None


def index_agrees(key: MasterKey, backend: Backend, pack: str, header: dict[bytes, BlobLocation]) -> bool:
    """Whether the pack's index object lists what its header does (True if it does not read: `check` reports its
    damage with the index phase). Its entries are compared with the header's as they are unpacked, so a pack of
    PACK_BLOBS (16 384) small blobs holds one map of them, not two (3.3 MB more at that size); anything irregular
    (a count that differs, entries out of pack order, one that does not unpack) is settled by the whole decode,
    `decode_index(...) == header`."""
    name = index_name(pack)
    try:
        plain = key.open(backend.get(name), INDEX_AD, name)
        entries = msgpack.Unpacker()
        entries.feed(plain)
        if entries.read_array_header() == 3 and entries.unpack() == INDEX_FORMAT and entries.unpack() == pack:
            n, end = entries.read_array_header(), -1
            if n == len(header):
                for _ in range(n):
                    bid, typ, offset, length, raw_length = entries.unpack()
                    # in pack order, as the writers put them: rising offsets make each id a different header entry
                    if offset <= end or header.get(bid) != BlobLocation(pack, offset, length, raw_length, typ):
                        break
                    end = offset
                else:
                    return True
    except (CorruptObject, MissingObject):
        return True
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        pass
    return (index := read_index(key, backend, pack)) is None or index == header


def read_index(key: MasterKey, backend: Backend, pack: str) -> dict[bytes, BlobLocation] | None:
    """The pack's own index object, if it reads (None if it is missing or damaged)."""
    try:
        return decode_index(key, index_name(pack), backend.get(index_name(pack)))
    except (CorruptObject, UnsupportedFormat, MissingObject):
        return None
