"""index/<pack-id>: the blob locations of one pack, so opening a repository never reads packs.

Format (version 1): sealed (ad=b"phonevault/v1/index") msgpack [1, pack id, [[blob id, type, offset, length,
raw length], …]]. One index object per pack, written right after its pack: a crash between the two leaves a pack
no index describes: harmless (check notes it, prune reclaims it). A missing, damaged or wrong index object is written
again from its pack's header by `check --repair-index` (store/repair.py).
"""

from __future__ import annotations

import msgpack

from .backends import Backend
from .crypto import MasterKey
from .errors import CorruptObject, UnsupportedFormat
from .packs import BlobLocation

INDEX_FORMAT = 1
INDEX_AD = b"phonevault/v1/index"


def index_name(pack_id: str) -> str:
    return f"index/{pack_id}"


def write_index(backend: Backend, key: MasterKey, pack_id: str, locations: dict[bytes, BlobLocation]) -> str:
    entries = [[bid, loc.type, loc.offset, loc.length, loc.raw_length] for bid, loc in locations.items()]
    name = index_name(pack_id)
    backend.put(name, key.seal(msgpack.packb([INDEX_FORMAT, pack_id, entries]), INDEX_AD))
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
