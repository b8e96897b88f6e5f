"""When a photo was taken, read from its own bytes: the EXIF DateTimeOriginal of a JPEG or a HEIC/HEIF.

Value: the camera's wall-clock time as seconds since 1970 read as UTC. EXIF dates carry no zone and the
OffsetTimeOriginal tag is not applied, on purpose: the date of this value is the date the person saw on the phone
when they took the picture, which is how a camera roll is grouped. None when the bytes carry no usable date (no
EXIF, no DateTimeOriginal nor DateTimeDigitized, "0000:00:00 …", a format other than JPEG and HEIF, bytes no parser
takes): the caller then uses the file's mtime.

Reading: a JPEG's markers are walked from SOI up to its first APP1 "Exif" segment, so only the bytes up to it are
read (normally the first chunk; at most `JPEG_SCAN` bytes); a HEIF (an ISO BMFF file whose `ftyp` names a HEIF
brand) is read whole, at most `MAX_BYTES`, and its EXIF item taken from pillow-heif. Nothing is written anywhere.
Memory: the bytes read (≤ `JPEG_SCAN` for a JPEG, ≤ `MAX_BYTES` for a HEIF).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import UTC, datetime

from PIL import Image

JPEG_SCAN = 1 << 20  # a camera writes its Exif APP1 first; a file whose Exif is later than this has no date here
MAX_BYTES = 96 * 2**20  # as the thumbnailer: anything larger is not decoded
EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
DATE_TIME_DIGITIZED = 0x9004
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"})


def capture_time(pieces: Iterable[bytes]) -> int | None:
    """The photo's capture time (see the module docstring) from its bytes, given in order; reads no more of
    ``pieces`` than it needs."""
    it = iter(pieces)
    head = bytearray()
    for piece in it:
        head += piece
        if len(head) >= 12:
            break
    if head[:2] == b"\xff\xd8":
        return _jpeg(head, it)
    if head[4:8] == b"ftyp" and bytes(head[8:12]) in HEIF_BRANDS:
        return _heif(head, it)
    return None


def parse_exif_date(exif: bytes) -> int | None:
    """DateTimeOriginal (else DateTimeDigitized) of an EXIF block (TIFF bytes, with or without "Exif\\0\\0")."""
    try:
        tags = Image.Exif()
        tags.load(exif)
        ifd = tags.get_ifd(EXIF_IFD)
        for tag in (DATE_TIME_ORIGINAL, DATE_TIME_DIGITIZED):
            if (when := _seconds(ifd.get(tag))) is not None:
                return when
    except Exception:  # EXIF from a phone can be damaged any way at all: no date, not an error
        return None
    return None


def _seconds(value: object) -> int | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        when = datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return int(when.replace(tzinfo=UTC).timestamp())


def _jpeg(buf: bytearray, rest: Iterable[bytes]) -> int | None:
    it = iter(rest)

    def need(n: int) -> bool:
        while len(buf) < n:
            if len(buf) > JPEG_SCAN or (piece := next(it, None)) is None:
                return False
            buf.extend(piece)
        return True

    at = 2
    while need(at + 4):
        if buf[at] != 0xFF:
            return None  # not at a marker: damaged
        marker = buf[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
            continue
        if marker in (0xD9, 0xDA):  # EOI, or SOS: the picture starts and no Exif came before it
            return None
        length = int.from_bytes(buf[at + 2 : at + 4], "big")
        if marker == 0xE1:
            if not need(at + 2 + length):
                return None
            payload = bytes(buf[at + 4 : at + 2 + length])
            if payload.startswith(b"Exif\x00\x00"):
                return parse_exif_date(payload)
        at += 2 + length
    return None


def _heif(buf: bytearray, rest: Iterable[bytes]) -> int | None:
    for piece in rest:
        buf += piece
        if len(buf) > MAX_BYTES:
            return None
    try:
        from pillow_heif import open_heif

        exif = open_heif(io.BytesIO(bytes(buf)), convert_hdr_to_8bit=False).info.get("exif")
    except Exception:  # not a HEIF after all, or one libheif refuses: no date
        return None
    return parse_exif_date(exif) if exif else None
