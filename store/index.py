"""index/<pack-id>: the blob locations of one pack, so opening a repository never reads packs.

Format (version 1): sealed (ad=b"phonevault/v1/index") msgpack [1, pack id, [[blob id, type, offset, length,
raw length], …]]. One index object per pack, written right after its pack: a crash between the two leaves a pack
no index describes: harmless (check notes it, prune reclaims it). A missing, damaged or wrong index object is written
again from its pack's header by `check --repair-index` (store/repair.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgpack

from .backends import Backend
from .crypto import MasterKey
from .errors import CorruptObject, MissingObject, UnsupportedFormat
from .packs import BlobLocation, PackLocations, pack_entries

INDEX_FORMAT = 1
INDEX_AD = b"phonevault/v1/index"


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
