"""The MBFile codec: the NSKeyedArchiver binary plist in each Manifest.db row's `file` column.

An archive is a bplist00 dict {$archiver: "NSKeyedArchiver", $version: 100000, $top: {root: UID(1)}, $objects}
whose root object is an `MBFile` (class chain MBFile, NSObject): ints inline (Size, Mode, UserID, GroupID,
InodeNumber, LastModified, LastStatusChange, Birth, Flags, ProtectionClass), strings (RelativePath, Target) and
NSMutableData (EncryptionKey: u32le protection class + wrapped key) by UID, `$null` at object 0.

`encode_mbfile` is deterministic (same fields, same bytes: keys in sorted order) and writes the shape devices
write; `decode_mbfile` reads any MBFile archive, resolving UIDs to strings, bytes, dicts and lists, and raises
ValueError naming what is wrong. Memory: one archive (a few hundred bytes), plus a cache of up to 4096 archive
templates, one per shape (same keys and value widths).
"""

from __future__ import annotations

import functools
import plistlib
import struct
from collections.abc import Mapping
from typing import Any


def encode_mbfile(mbfile: Mapping[str, Any]) -> bytes:
    """NSKeyedArchiver binary plist of an ``MBFile`` whose fields are ``mbfile``.

    str values become archived strings (RelativePath, Target), bytes become ``NSMutableData`` (EncryptionKey),
    ints stay inline — the shape devices write. Deterministic: same fields → same bytes.
    Archives of one shape (same keys, same value widths) differ only in their values' bytes, so each shape is
    serialised once and values are spliced in: a 300 000-file Manifest.db is 300 000 archives.
    """
    fields = [(k, int(v) if type(v) is bool else v) for k in sorted(mbfile) if (v := mbfile[k]) is not None]
    bodies = [_value_body(k, v) for k, v in fields]
    template = _mbfile_template(tuple((k, type(v), len(b)) for (k, v), b in zip(fields, bodies, strict=True)))
    out = bytearray(template[0])
    for offset, body in zip(template[1], bodies, strict=True):
        out[offset : offset + len(body)] = body
    return bytes(out)


def _value_body(key: str, value: Any) -> bytes:
    if type(value) is int:
        return _bplist_int(value)
    if type(value) is str:
        try:
            raw = value.encode("ascii")
            return _bplist_marker(0x50, len(raw)) + raw
        except UnicodeEncodeError:
            raw = value.encode("utf-16-be")
            return _bplist_marker(0x60, len(raw) // 2) + raw
    if isinstance(value, bytes | bytearray):
        return _bplist_marker(0x40, len(value)) + bytes(value)
    raise TypeError(f"MBFile field {key!r}: cannot archive {type(value).__name__}")


@functools.lru_cache(maxsize=4096)
def _mbfile_template(shape: tuple[tuple[str, type, int], ...]) -> tuple[bytes, tuple[int, ...]]:
    """(archive bytes, offset of each value's body) for archives of ``shape``."""
    fields = [(key, _Placeholder(kind, length)) for key, kind, length in shape]
    where: dict[int, int] = {}
    data = _archive_mbfile(fields, where)
    offsets = tuple(where[id(p)] for _, p in fields)
    return data, offsets


class _Placeholder:
    """Stands in for a value whose body is ``length`` bytes while a template is built."""

    __slots__ = ("kind", "length")

    def __init__(self, kind: type, length: int) -> None:
        self.kind = kind
        self.length = length


def _archive_mbfile(fields: list[tuple[str, Any]], where: dict[int, int]) -> bytes:
    objects: list[Any] = ["$null", None]
    top: dict[str, Any] = {}
    data_class: plistlib.UID | None = None
    for key, value in fields:
        kind = value.kind if type(value) is _Placeholder else type(value)
        if kind is str:
            top[key] = plistlib.UID(len(objects))
            objects.append(value)
        elif kind is int:
            top[key] = value
        else:
            if data_class is None:
                data_class = plistlib.UID(len(objects))
                objects.append({"$classname": "NSMutableData", "$classes": ["NSMutableData", "NSData", "NSObject"]})
            top[key] = plistlib.UID(len(objects))
            objects.append({"NS.data": value, "$class": data_class})
    top["$class"] = plistlib.UID(len(objects))
    objects.append({"$classname": "MBFile", "$classes": ["MBFile", "NSObject"]})
    objects[1] = top
    archive = {
        "$archiver": "NSKeyedArchiver",
        "$objects": objects,
        "$top": {"root": plistlib.UID(1)},
        "$version": 100000,
    }
    return _bplist(archive, where)


def _bplist(root: Any, where: dict[int, int] | None = None) -> bytes:
    """A binary plist (bplist00) of ``root``: plistlib's output is as valid but ~6x slower, and a 300 000-file
    Manifest.db is 300 000 archives. Handles what archives hold: dict (str keys, in given order), list, str,
    bytes, bool, int (< 2**63), UID; equal strings and ints are stored once, as plistlib does.
    Template placeholders become zero bodies of their length, and ``where`` gets their offsets.
    """
    placeholders: dict[int, int] = {}  # body index → id(placeholder)
    bodies: list[bytes | tuple[int, list[int]]] = []
    seen: dict[tuple[type, Any], int] = {}

    def add(value: Any) -> int:
        kind = type(value)
        if kind is str or kind is int or kind is bool:
            ref = seen.get((kind, value))
            if ref is not None:
                return ref
        ref = len(bodies)
        if kind is dict:
            bodies.append(b"")
            keys = [add(k) for k in value]
            vals = [add(v) for v in value.values()]
            bodies[ref] = (0xD0, keys + vals)
            return ref
        if kind is list:
            bodies.append(b"")
            bodies[ref] = (0xA0, [add(v) for v in value])
            return ref
        if kind is bool:
            body = b"\x09" if value else b"\x08"
        elif kind is int:
            body = _bplist_int(value)
        elif kind is str:
            try:
                raw = value.encode("ascii")
                body = _bplist_marker(0x50, len(raw)) + raw
            except UnicodeEncodeError:
                raw = value.encode("utf-16-be")
                body = _bplist_marker(0x60, len(raw) // 2) + raw
        elif kind is bytes:
            body = _bplist_marker(0x40, len(value)) + value
        elif kind is _Placeholder:
            placeholders[ref] = id(value)
            body = bytes(value.length)
        elif kind is plistlib.UID:
            n = value.data
            width = 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4
            body = bytes([0x80 | (width - 1)]) + n.to_bytes(width, "big")
        else:
            raise TypeError(f"cannot write {kind.__name__} to a binary plist")
        bodies.append(body)
        if kind is str or kind is int or kind is bool:
            seen[(kind, value)] = ref
        return ref

    add(root)
    ref_size = 1 if len(bodies) < 1 << 8 else 2 if len(bodies) < 1 << 16 else 4
    out = bytearray(b"bplist00")
    offsets = []
    for index, body in enumerate(bodies):
        offsets.append(len(out))
        if where is not None and index in placeholders:
            where[placeholders[index]] = len(out)
        if isinstance(body, tuple):
            marker, refs = body
            out += _bplist_marker(marker, len(refs) // 2 if marker == 0xD0 else len(refs))
            out += b"".join(r.to_bytes(ref_size, "big") for r in refs)
        else:
            out += body
    table_at = len(out)
    off_size = 1 if table_at < 1 << 8 else 2 if table_at < 1 << 16 else 4 if table_at < 1 << 32 else 8
    out += b"".join(o.to_bytes(off_size, "big") for o in offsets)
    out += bytes(6) + bytes([off_size, ref_size]) + struct.pack(">QQQ", len(bodies), 0, table_at)
    return bytes(out)


def _bplist_int(value: int) -> bytes:
    if value < 0:
        return b"\x13" + value.to_bytes(8, "big", signed=True)
    if value < 1 << 8:
        return b"\x10" + value.to_bytes(1, "big")
    if value < 1 << 16:
        return b"\x11" + value.to_bytes(2, "big")
    if value < 1 << 32:
        return b"\x12" + value.to_bytes(4, "big")
    if value < 1 << 63:
        return b"\x13" + value.to_bytes(8, "big")
    raise OverflowError(f"{value} does not fit an MBFile integer")


def _bplist_marker(marker: int, count: int) -> bytes:
    if count < 15:
        return bytes([marker | count])
    return bytes([marker | 0xF]) + _bplist_int(count)


def decode_mbfile(blob: bytes) -> dict[str, Any]:
    """The fields of an archived ``MBFile`` with every UID resolved (strings, NSData → bytes, NSDictionary → dict).

    Raises ValueError naming what is wrong; callers turn it into ManifestInvalid with the fileID.
    """
    try:
        archive = plistlib.loads(blob)
    except Exception as exc:
        raise ValueError(f"not a binary plist ({type(exc).__name__})") from None
    if not isinstance(archive, dict) or archive.get("$archiver") != "NSKeyedArchiver":
        raise ValueError("not an NSKeyedArchiver archive")
    objects = archive.get("$objects")
    root = (archive.get("$top") or {}).get("root")
    if not isinstance(objects, list) or not isinstance(root, plistlib.UID):
        raise ValueError("archive has no $objects or $top.root")

    def resolve(value: Any, depth: int) -> Any:
        if depth > 16:  # a cyclic or absurdly nested archive; MBFiles are two levels deep
            raise ValueError("archive nests too deeply")
        if isinstance(value, plistlib.UID):
            if not 0 <= value.data < len(objects):
                raise ValueError(f"UID {value.data} outside $objects")
            value = objects[value.data]
            if value == "$null":
                return None
        if isinstance(value, dict):
            if "NS.data" in value:
                return value["NS.data"]
            if "NS.string" in value:
                return value["NS.string"]
            if "NS.keys" in value and "NS.objects" in value:
                return {
                    resolve(k, depth + 1): resolve(v, depth + 1)
                    for k, v in zip(value["NS.keys"], value["NS.objects"], strict=False)
                }
            if "NS.objects" in value:
                return [resolve(v, depth + 1) for v in value["NS.objects"]]
            return {k: resolve(v, depth + 1) for k, v in value.items() if k != "$class"}
        if isinstance(value, list):
            return [resolve(v, depth + 1) for v in value]
        return value

    top = objects[root.data] if 0 <= root.data < len(objects) else None
    if not isinstance(top, dict):
        raise ValueError("$top.root is not an object")
    class_ref = top.get("$class")
    if isinstance(class_ref, plistlib.UID) and 0 <= class_ref.data < len(objects):
        classname = (objects[class_ref.data] or {}).get("$classname")
        if classname != "MBFile":
            raise ValueError(f"root object is a {classname!r}, not an MBFile")
    return resolve(top, 0)
