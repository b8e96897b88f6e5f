"""events/<device>/<seq>: the append-only log, the repository's only source of truth.

`<device>` is MasterKey.name_hash(device id) (never a UDID); `<seq>` is a 10-digit zero-padded counter starting at
0000000000. A segment is one commit: sealed (ad = the object's own name, so a segment cannot be replayed under
another seq or device) msgpack [SEGMENT_FORMAT, [[event type, [field values in declared order]], …]].
Fields are encoded by position; a later format may append fields with defaults, never reorder them.
Appending is `put_exclusive` of the next seq: of two writers racing for the same seq exactly one wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from .crypto import MasterKey
from .errors import CorruptObject, UnsupportedFormat
from .records import DeviceRecord, SnapshotStats, pack_record, unpack_record

SEGMENT_FORMAT = 1
SEQ_DIGITS = 10


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    device: str  # the device's own id (a UDID), only ever stored encrypted
    info: DeviceRecord  # a display name + the sync layer's identity record (opaque here)
    time: int  # microseconds since the epoch, UTC


@dataclass(frozen=True, slots=True)
class SnapshotCommitted:
    snapshot: bytes  # 16 random bytes
    time: int
    source: str  # "folder:/path" or "device:<udid>" (a rollback is a HeadMoved, not a commit)
    parent: bytes | None  # the head this snapshot was staged on
    deltas: tuple[bytes, ...]  # delta blob ids: every path put/removed versus the parent
    tree: bytes  # root tree blob id: checkpoint of the result
    packs: tuple[str, ...]  # packs written by this commit (their index objects are index/<pack>)
    stats: SnapshotStats
    meta: bytes = b""  # opaque to the store: the sync layer's record of the backup's properties
    committed: int = 0  # when this commit was made; `time` is the backup's own date (0: logs before, same as time)


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


def _ids(value: Any, where: str) -> tuple:
    return tuple(bytes(x) if isinstance(x, bytes) else x for x in value)


def _opaque(value: Any, where: str) -> bytes:
    # Before records were typed, meta was a map; it stays readable as the same map, packed.
    return msgpack.packb(value) if isinstance(value, dict) else bytes(value)


# Fields that are not plain msgpack values, and how to read them back.
_DECODERS: dict[str, Callable[[Any, str], Any]] = {
    "deltas": _ids,
    "packs": _ids,
    "info": DeviceRecord.unpack,
    "stats": lambda v, where: unpack_record(SnapshotStats, v, where),
    "meta": _opaque,
}


def _encode_value(value: Any) -> Any:
    return pack_record(value) if hasattr(value, "FORMAT") else list(value) if isinstance(value, tuple) else value


def segment_name(device_key: str, seq: int) -> str:
    return f"events/{device_key}/{seq:0{SEQ_DIGITS}d}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "events" or len(parts[2]) != SEQ_DIGITS or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def encode_events(events: list[Event]) -> bytes:
    return msgpack.packb(
        [SEGMENT_FORMAT, [[type(e).__name__, [_encode_value(getattr(e, f.name)) for f in fields(e)]] for e in events]]
    )


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
            kwargs = {n: (_DECODERS[n](v, name) if n in _DECODERS else v) for n, v in zip(names, values, strict=False)}
            out.append(cls(**kwargs))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptObject(name, f"malformed event {item!r:.80}: {e}") from None
    return out


def seal_segment(key: MasterKey, name: str, events: list[Event]) -> bytes:
    return key.seal(encode_events(events), name.encode())


def open_segment(key: MasterKey, name: str, sealed: bytes) -> list[Event]:
    return decode_events(key.open(sealed, name.encode(), name), name)
