"""Typed records inside events: one codec for every frozen dataclass that travels through the event log.

A record is encoded as a msgpack array `[FORMAT, field values in declared order]`, like the events themselves, so a
later format may append fields with defaults but never reorder them. Decoding takes:
- an array whose format is at most the class's `FORMAT` (missing trailing fields take their defaults; fields from a
  newer format are refused with UnsupportedFormat rather than silently dropped);
- a map, the format of logs written before records were typed (every vault made until then): its known keys are
  taken by name, unknown keys ignored.

Records owned by the store are defined here (`SnapshotStats`, `DeviceRecord`). Records owned by sync/ (the device's
identity, a backup's properties) travel as opaque bytes inside them (`DeviceRecord.data`, `SnapshotCommitted.meta`)
and use the same codec from their own module, so the store never reads an iPhone field by name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import msgpack

from .errors import CorruptObject, UnsupportedFormat

R = TypeVar("R")


def pack_record(record: Any) -> list:
    return [type(record).FORMAT, *(getattr(record, f.name) for f in fields(record))]


def unpack_record(cls: type[R], value: Any, where: str) -> R:
    names = [f.name for f in fields(cls)]
    if isinstance(value, dict):  # written before records were typed: by key
        return cls(**{k: v for k, v in value.items() if k in names})
    if not isinstance(value, list | tuple) or not value:
        raise CorruptObject(where, f"a {cls.__name__} record is neither an array nor a map: {value!r:.60}")
    fmt, *values = value
    if not isinstance(fmt, int) or fmt < 1 or fmt > cls.FORMAT:
        raise UnsupportedFormat(f"{where} ({cls.__name__})", fmt)
    if len(values) > len(names):
        raise CorruptObject(where, f"a {cls.__name__} record has {len(values)} fields, the format has {len(names)}")
    try:
        return cls(**dict(zip(names, values, strict=False)))
    except TypeError as e:
        raise CorruptObject(where, f"malformed {cls.__name__} record: {e}") from None


def encode_record(record: Any) -> bytes:
    """A record as bytes, for records the store carries without reading (sync's)."""
    return msgpack.packb(pack_record(record))


def decode_record(cls: type[R], data: bytes, where: str) -> R:
    try:
        value = msgpack.unpackb(data) if data else {}
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObject(where, f"unreadable {cls.__name__} record: {e}") from None
    return unpack_record(cls, value, where)


@dataclass(frozen=True, slots=True)
class SnapshotStats:
    """What a commit counted (format 1). `new_*` count what this commit added to the vault."""

    FORMAT: ClassVar[int] = 1

    files: int = 0
    size: int = 0  # bytes of the snapshot's files
    added: int = 0  # paths, versus the parent
    modified: int = 0
    removed: int = 0
    new_files: int = 0  # files with at least one chunk the vault did not hold
    new_blobs: int = 0
    new_raw: int = 0  # plaintext bytes of new blobs
    new_bytes: int = 0  # stored (compressed, sealed) bytes of new blobs


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """The device as the store sees it (format 1): a name to show people, and the sync layer's own record of its
    identity, opaque here (sync/plists.py `DeviceInfo`, encoded with `encode_record`)."""

    FORMAT: ClassVar[int] = 1

    name: str = ""
    data: bytes = b""

    @classmethod
    def unpack(cls, value: Any, where: str) -> DeviceRecord:
        if isinstance(value, dict):  # before records were typed, DeviceSeen.info was the identity dict itself
            return cls(str(value.get("name") or ""), msgpack.packb(value))
        return unpack_record(cls, value, where)
