"""The bytes of a synthetic phone's photos, videos and preference plists (SQLite databases: `databases`).

Invariant: a file's bytes are a pure function of (seed, domain, path, rev), rev being the day it last changed, so
an unchanged file keeps its bytes (a photo's also of when it was taken and its mtime, which change only with rev).
Photos and the phone's thumbnails are real JPEG/HEIC pictures with EXIF dates (`pictures`), padded to their size
with BLAKE3 XOF output keyed per (seed, file, rev); videos are that XOF output behind a QuickTime header (no
decoder here makes a poster frame of them: the web view shows an icon). Plists are real plists (binary, or XML for
plist-xml) of one of `len(PLIST_STATE_LENGTHS)` shapes; a plist's size depends only on its shape and format.

Memory: media stream in ≤ `PIECE` (1 MiB) pieces, nothing holds a whole file; a plist is at most a few KiB.
"""

from __future__ import annotations

import functools
import plistlib
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3

from . import pictures
from .seeds import DAY, EPOCH, WORDS, derive, plist_date

PIECE = 1 << 20

_HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic\x00\x00\x00\x22meta\x00\x00\x00\x00"
_JPEG = b"\xff\xd8\xff\xe1\x00\x62Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08"
_MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  \x00\x00\x00\x08wide"

# Most preference plists are small; a few carry kilobytes of app state.
PLIST_STATE_LENGTHS = (
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    160,
    200,
    256,
    320,
    400,
    512,
    640,
    800,
    1024,
    1400,
    2048,
    3000,
    4096,
)


class FileBytes:
    """The bytes of one phone's media and plists. ``size`` and ``plist_count`` decide which plist shapes it uses."""

    def __init__(self, seed: int, size: int, plist_count: int, model: str = "iPhone") -> None:
        self.seed = seed
        self.shapes = _shape_count(size, plist_count)
        self.model = model

    def plist_key(self, domain: str, path: str, rev: int) -> tuple[bytes, int]:
        """(the plist's key, its shape). The key's bytes 4..8 also date a day-0 plist (one hash per plist)."""
        k = derive(self.seed, "plist", domain, path, rev)
        return k, k[0] % self.shapes

    def plist(self, domain: str, path: str, kind: str, rev: int) -> bytes:
        k, shape = self.plist_key(domain, path, rev)
        template, ident_at, state_at, state_len = plist_template(kind == "plist-xml", shape)
        ident = str(uuid.UUID(bytes=k[:16])).upper().encode()
        state = blake3.blake3(k).digest(state_len if kind != "plist-xml" else state_len // 2)
        if kind == "plist-xml":
            state = state.hex().encode()
        out = bytearray(template)
        out[ident_at : ident_at + 36] = ident
        out[state_at : state_at + state_len] = state
        return bytes(out)

    def media(
        self, domain: str, path: str, kind: str, size: int, rev: int, taken: int = 0, mtime: int = 0
    ) -> Iterator[bytes]:
        """A photo, thumbnail or video (``kind`` heic, jpg, thumb, mov or video) in ≤ `PIECE` pieces. Photos and
        thumbnails are real pictures (`pictures`) taken at ``taken`` and last changed at ``mtime``."""
        key = derive(self.seed, "bytes", domain, path, rev)
        if kind in ("heic", "jpg", "thumb"):
            # A thumbnail shows its original's scene (the same draws, smaller), with its own pad bytes.
            scene = derive(self.seed, "bytes", domain, _original_of(path), rev) if kind == "thumb" else key
            fmt = "heic" if kind == "heic" else "jpg"
            when = dict(taken=taken or mtime, mtime=mtime or taken, model=self.model, piece=PIECE)
            pieces = pictures.photo(scene, key, fmt, size, **when)
            first = next(pieces, None)
            if first is not None:
                yield first
                yield from pieces
                return
        # Videos, and photos too small for any picture: a real header and opaque bytes.
        header = {"heic": _HEIC, "jpg": _JPEG, "thumb": _JPEG}.get(kind, _MOV)
        xof = blake3.blake3(key=key)
        for off in range(0, size, PIECE):
            piece = xof.digest(length=min(PIECE, size - off), seek=off)
            if off == 0:
                piece = (header + piece[len(header) :])[:size]
            if off + PIECE >= size and kind in ("jpg", "thumb") and size >= 4:
                piece = piece[:-2] + b"\xff\xd9"  # JPEG end-of-image marker
            yield piece


def _original_of(thumb: str) -> str:
    """Media/PhotoData/Thumbnails/V2/DCIM/100APPLE/IMG_0001.HEIC/5005.JPG → Media/DCIM/100APPLE/IMG_0001.HEIC"""
    parts = thumb.split("/")
    return "/".join(["Media", *parts[4:-1]]) if len(parts) > 5 else thumb


def _shape_count(size: int, plist_count: int) -> int:
    """How many of the (growing) plist shapes to draw from: all of them normally; with many plists only the
    small ones, so 300 000 plists stay under a quarter of the phone and photos still fill the rest."""
    budget = size / 4 / max(plist_count, 1)
    total = 0.0
    for k in range(len(PLIST_STATE_LENGTHS)):
        total += 0.7 * len(plist_template(False, k)[0]) + 0.3 * len(plist_template(True, k)[0])
        if total / (k + 1) > budget:
            return max(k, 1)
    return len(PLIST_STATE_LENGTHS)


@functools.cache
def plist_template(xml: bool, shape: int) -> tuple[bytes, int, int, int]:
    """(template, identifier offset, state offset, state length) of a plist shape.

    Generating 300 000 plists with plistlib would take a minute; instead each shape is serialised once with
    fixed-width placeholders and files splice their own identifier and state bytes in (same size, other bytes).
    """
    r = random.Random(shape)
    state_len = PLIST_STATE_LENGTHS[shape]
    ident = "PVIDENT" + "Q" * 29
    state = b"PVSTATE!" + b"Q" * (state_len - 8)
    d: dict[str, Any] = {
        "Identifier": ident,
        "LastLaunchDate": plist_date(EPOCH - r.randrange(400 * DAY)),
        "LaunchCount": r.randrange(10_000),
        "Enabled": r.random() < 0.5,
        "RecentItems": [" ".join(r.choices(WORDS, k=r.randint(1, 6))) for _ in range(r.randint(0, shape // 2))],
        "State": state.decode() if xml else state,
    }
    data = plistlib.dumps(d, fmt=plistlib.FMT_XML if xml else plistlib.FMT_BINARY, sort_keys=True)
    return data, data.index(ident.encode()), data.index(state), state_len


def read_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while piece := fh.read(PIECE):
            yield piece
