"""Real pictures in a synthetic phone's backup folders, for the web view's tests.

The emulator's camera-roll files have a JPEG/HEIC header and random bytes after it, which no decoder takes. Here
each photo file of a written folder (`CameraRollDomain/Media/DCIM/…`, .JPG and .HEIC) is replaced by a real image of
exactly the same size: a small picture made with Pillow (JPEG) or pillow-heif (HEIC) from a hash of the original
bytes, padded to the original size (a JPEG with bytes after its end-of-image marker, a HEIC with a trailing `free`
box), so the Manifest.db still describes the folder and the same original always becomes the same picture (what
the vault deduplicates stays deduplicated; an edited photo becomes another picture). Videos are left as they are.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import struct
from pathlib import Path

from PIL import Image, ImageDraw
from pillow_heif import register_heif_opener

register_heif_opener()


def picture(seed: bytes, fmt: str, size: tuple[int, int] = (240, 180)) -> bytes:
    """A small deterministic picture: a gradient and a few shapes whose colours come from `seed`."""
    h = hashlib.sha256(seed).digest()
    im = Image.new("RGB", size, (h[0], h[1], h[2]))
    draw = ImageDraw.Draw(im)
    for i in range(6):
        x, y = h[3 + i] % size[0], h[9 + i] % size[1]
        draw.ellipse((x - 30, y - 30, x + 30, y + 30), fill=(h[15 + i], h[21 + i], h[27 - i]))
    out = io.BytesIO()
    im.save(out, "HEIF" if fmt == "heic" else "JPEG", quality=85)
    return out.getvalue()


def padded(data: bytes, size: int, fmt: str) -> bytes:
    if len(data) + 8 > size:
        raise ValueError(f"a {len(data)}-byte picture does not fit in {size} bytes")
    if fmt == "heic":  # an ISO BMFF `free` box: readers skip it
        pad = size - len(data)
        return data + struct.pack(">I", pad) + b"free" + bytes(pad - 8)
    return data + bytes(size - len(data))  # after the JPEG's end-of-image marker: decoders stop before it


def realify(folder: Path) -> dict[str, bytes]:
    """Replace the folder's camera-roll photos by real pictures of the same size; domain path -> the new bytes."""
    db = sqlite3.connect(f"file:{folder / 'Manifest.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT fileID, domain, relativePath FROM Files WHERE flags = 1 AND domain = 'CameraRollDomain' "
            "AND relativePath LIKE 'Media/DCIM/%'"
        ).fetchall()
    finally:
        db.close()
    made: dict[str, bytes] = {}
    for file_id, domain, rel in rows:
        ext = rel.rsplit(".", 1)[-1].lower()
        if ext not in ("jpg", "heic"):
            continue
        path = folder / file_id[:2] / file_id
        original = path.read_bytes()
        new = padded(picture(original, ext), len(original), ext)
        path.write_bytes(new)
        made[f"{domain}/{rel}"] = new
    return made
