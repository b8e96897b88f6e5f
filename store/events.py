"""events/<device>/<seq>: the append-only log, the repository's only source of truth.

`<device>` is MasterKey.name_hash(device id) (never a UDID); `<seq>` is a 10-digit zero-padded counter starting at
0000000000. A segment is one commit: sealed (ad = the object's own name, so a segment cannot be replayed under
another seq or device) msgpack [SEGMENT_FORMAT, [[event type, [field values in declared order]], …]].
Fields are encoded by position; a later format may append fields with defaults, never reorder them.
Appending is `put_exclusive` of the next seq: of two writers racing for the same seq exactly one wins.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields

import msgpack

from .crypto import MasterKey
from .errors import CorruptObject, UnsupportedFormat

SEGMENT_FORMAT = 1
SEQ_DIGITS = 10


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    device: str  # the device's own id (a UDID), only ever stored encrypted
    info: dict  # descriptive fields, str -> str | None (name, model, iOS version, serial, …)
    time: int  # microseconds since the epoch, UTC


@dataclass(frozen=True, slots=True)
class SnapshotCommitted:
    snapshot: bytes  # 16 random bytes
    time: int
    source: str  # "folder:/path", "device:<udid>", "rollback:<id>"
    parent: bytes | None  # the head this snapshot was staged on
    deltas: tuple[bytes, ...]  # delta blob ids: every path put/removed versus the parent
    tree: bytes  # root tree blob id: checkpoint of the result
    packs: tuple[str, ...]  # packs written by this commit (their index objects are index/<pack>)
    stats: dict  # files, size, new_files, new_bytes (stored), …
    meta: dict = field(default_factory=dict)  # opaque to the store (sync puts backup properties here)


@dataclass(frozen=True, slots=True)
class HeadMoved:
    snapshot: bytes
    time: int
    reason: str = "rollback"


@dataclass(frozen=True, slots=True)
class SnapshotTagged:
    snapshot: bytes
    tag: str
    time: int
    removed: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotPinned:
    snapshot: bytes
    time: int
    pinned: bool = True


@dataclass(frozen=True, slots=True)
class SnapshotForgotten:
    snapshot: bytes
    time: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RestoredToDevice:
    snapshot: bytes
    time: int
    target: str


@dataclass(frozen=True, slots=True)
class Exported:
    snapshot: bytes
    time: int
    target: str


Event = (
    DeviceSeen
    | SnapshotCommitted
    | HeadMoved
    | SnapshotTagged
    | SnapshotPinned
    | SnapshotForgotten
    | RestoredToDevice
    | Exported
)
EVENT_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        DeviceSeen,
        SnapshotCommitted,
        HeadMoved,
        SnapshotTagged,
        SnapshotPinned,
        SnapshotForgotten,
        RestoredToDevice,
        Exported,
    )
}
_TUPLE_FIELDS = {"deltas", "packs"}


def segment_name(device_key: str, seq: int) -> str:
    return f"events/{device_key}/{seq:0{SEQ_DIGITS}d}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "events" or len(parts[2]) != SEQ_DIGITS or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def encode_events(events: list[Event]) -> bytes:
    return msgpack.packb([SEGMENT_FORMAT, [[type(e).__name__, list(astuple(e))] for e in events]])


def decode_events(plain: bytes, name: str) -> list[Event]:
    try:
        fmt, items = msgpack.unpackb(plain)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObject(name, f"unreadable event segment: {e}") from None
    if fmt != SEGMENT_FORMAT:
        raise UnsupportedFormat(name, fmt)
    out: list[Event] = []
    for item in items:
        try:
            type_name, values = item
            cls = EVENT_TYPES[type_name]
            names = [f.name for f in fields(cls)]
            kwargs = {
                n: (tuple(bytes(x) if isinstance(x, bytes) else x for x in v) if n in _TUPLE_FIELDS else v)
                for n, v in zip(names, values, strict=False)
            }
            out.append(cls(**kwargs))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptObject(name, f"malformed event {item!r:.80}: {e}") from None
    return out


def seal_segment(key: MasterKey, name: str, events: list[Event]) -> bytes:
    return key.seal(encode_events(events), name.encode())


def open_segment(key: MasterKey, name: str, sealed: bytes) -> list[Event]:
    return decode_events(key.open(sealed, name.encode(), name), name)
