"""Thumbnails and previews of camera-roll items, made from their real bytes, cached only sealed.

JPEG, PNG (and whatever else Pillow decodes) through Pillow; HEIC/HEIF through pillow-heif. Decoding is in memory
(`io.BytesIO`): nothing decoded or encoded ever touches a file, temporary ones included. A result is cached in the
vault's LMDB cache (`derived`, sealed with the vault's keys) under `thumb/<format>/<px>/<content key>`; an item that
does not decode (a video, or bytes no decoder takes) is cached as the empty value, so the page shows the icon at
once the next time. The content key names the bytes, so an entry never goes stale.
Orientation follows the EXIF Orientation tag; the output is a baseline JPEG with no metadata (no EXIF, no GPS).
Memory: the original's bytes (at most MAX_SOURCE_BYTES, else the icon) and its decoded pixels, per worker.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

try:  # HEIC is what iPhones shoot; without pillow-heif such photos get the icon
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency; a broken install degrades to icons
    pass

THUMB_FORMAT = 1
THUMB_PX = 320
PREVIEW_PX = 2048
MAX_SOURCE_BYTES = 96 * 2**20  # a 48 MP ProRAW DNG is ~75 MB; anything larger gets the icon, not a decode
MAX_PIXELS = 120_000_000  # decompression-bomb guard: no camera makes more, a crafted file may claim more

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def cache_key(content: bytes, px: int) -> bytes:
    return b"thumb/%d/%d/" % (THUMB_FORMAT, px) + content


def render(data: bytes, px: int) -> bytes | None:
    """A JPEG of at most px × px from an image's bytes, or None when they do not decode as an image."""
    if len(data) > MAX_SOURCE_BYTES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (px, px))  # JPEG: decode at a reduced scale, far cheaper for a thumbnail
                im = ImageOps.exif_transpose(im)
                im.thumbnail((px, px))
                if im.mode != "RGB":
                    im = im.convert("RGB")
                out = io.BytesIO()
                im.save(out, "JPEG", quality=82)
                return out.getvalue()
    except Exception:  # bytes from a phone may break a decoder any way at all: no preview, not a 500
        return None
