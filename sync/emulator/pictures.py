"""Real pictures for the synthetic phone's camera roll: JPEG (Pillow) and HEIC (pillow-heif), with EXIF dates.

A photo of ``size`` bytes is a real picture drawn from its key — a scene of sky and ground gradients, a sun, hills,
a few shapes, low-frequency colour variation and per-pixel grain — rendered at a moderate resolution
(`RESOLUTION`; smaller when ``size`` is small, as for the phone's own 5005.JPG thumbnails) and encoded with its
EXIF: Make/Model, DateTime (the file's mtime, so an edited photo says when it was edited), DateTimeOriginal and
DateTimeDigitized (when it was taken), OffsetTime* "+00:00" (the synthetic phone lives in UTC). It is then padded
to exactly ``size`` bytes with opaque bytes where every decoder skips them, as a real iPhone file carries megabytes
of gain-map, depth and maker data beside the picture:
  JPEG  SOI, the encoder's APP1 (Exif; its JFIF APP0 is dropped, as cameras write none), then APP9 segments of pad (≤ 65 533 bytes of payload each;
        0xFF fill bytes for a remainder under 4), then the encoder's DQT … EOI unchanged: the file ends in EOI.
  HEIC  the encoder's ftyp, meta and mdat unchanged (iloc offsets stay valid), then a top-level `free` box of pad.
The pad is BLAKE3 XOF output keyed by the caller per (seed, file, revision): unique per file and revision, so no two
photos share a chunk, and as incompressible as the coded picture (zstd saves ≤ 2 % on the whole; the benchmark
checks it). Encoding a full-size picture instead would cost ~0.3 s a photo (HEIC) for no more realism in the vault.

Determinism: a pure function of (scene key, pad key, format, size, taken, mtime, model) given the Pillow and pillow-heif releases
(their libjpeg-turbo, libheif and x265), which pyproject.toml pins; x265's output does not depend on its thread
count. Randomness comes only from the key (BLAKE3 XOF and `random.Random(key)`).

Memory: one picture's pixels (≤ 1024 × 1024 RGB, 3 MiB) and its coded bytes; the pad streams in ≤ `piece` pieces.
"""

from __future__ import annotations

import functools
import io
import math
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import blake3
from PIL import Image, ImageChops, ImageDraw
from pillow_heif import register_heif_opener

register_heif_opener()

#: format → (long side, short side) of a full-size picture. HEIC is smaller: x265 costs ~0.3 µs a pixel even at
#: its fastest settings, libjpeg-turbo a tenth of that (measured: 512 × 384 HEIC ~55 ms, 1024 × 768 JPEG ~25 ms).
RESOLUTION = {"jpg": (1024, 768), "heic": (512, 384)}
JPEG_QUALITY = 90
HEIC_QUALITY = 80
# x265's fastest preset, and no rate-distortion refinement: 7-9× faster than its defaults for a still picture.
HEIC_PARAMS = {"preset": "ultrafast", "x265:rd": "1", "x265:sao": "0", "x265:rdoq-level": "0"}
GRAIN = 40  # per-pixel noise amplitude (0-255): sensor grain, and what makes the coded picture incompressible
MIN_SIDE = 32  # below this no picture is made: the bytes are the pad alone behind the format's header
EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
_PAD_MARKER = b"\xff\xe9"  # APP9: no reader gives it a meaning
_SEGMENT = 65_533  # the largest APPn payload (the length field counts itself)


def exif_date(ts: int) -> str:
    """EXIF's date format ("YYYY:MM:DD HH:MM:SS") of a Unix time, in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y:%m:%d %H:%M:%S")


def photo(
    scene: bytes, pad: bytes, fmt: str, size: int, *, taken: int, mtime: int, model: str, piece: int
) -> Iterator[bytes]:
    """The ``size`` bytes of a ``fmt`` ("jpg" or "heic") photo of the scene drawn from ``scene``, padded with the
    XOF of ``pad``, in ≤ ``piece`` pieces; an empty iterator when ``size`` is too small for any picture (the caller
    then falls back to unstructured bytes)."""
    coded = _fit(scene, fmt, size, taken, mtime, model)
    if coded is None:
        return iter(())
    return _pieces(_layout(pad, fmt, coded, size), piece)


@functools.lru_cache(maxsize=16)  # a file read twice in a row (hashed, then sent) is encoded once; ≤ 16 × ~0.4 MB
def _fit(key: bytes, fmt: str, size: int, taken: int, mtime: int, model: str) -> bytes | None:
    """The largest picture (down from `RESOLUTION`) whose coded bytes leave room for the pad's framing."""
    r = random.Random(key)
    long, short = RESOLUTION[fmt]
    w, h = (long, short) if r.random() < 0.75 else (short, long)  # a quarter are portrait
    # Coded bytes per pixel at these qualities and grain are ~0.5 (JPEG) and ~0.8 (HEIC): aim at ≤ 60 % of size.
    scale = min(1.0, math.sqrt(size * 0.6 / ((0.5 if fmt == "jpg" else 0.8) * w * h)))
    exif = _exif(taken, mtime, model)
    while True:
        sw, sh = int(w * scale) & ~1, int(h * scale) & ~1  # even sides: 4:2:0 chroma
        if min(sw, sh) < MIN_SIDE:
            return None
        coded = _encode(_scene(key, sw, sh), fmt, exif)
        if fmt == "jpg" and coded[2:4] == b"\xff\xe0":  # a camera's JPEG starts with its Exif APP1, no JFIF APP0
            coded = coded[:2] + coded[4 + int.from_bytes(coded[4:6], "big") :]
        if len(coded) + 8 <= size:
            return coded
        scale *= 0.7


def _exif(taken: int, mtime: int, model: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Apple"  # Make
    exif[0x0110] = model  # Model
    exif[0x0112] = 1  # Orientation: as stored
    exif[0x0132] = exif_date(mtime)  # DateTime: last changed
    ifd = exif.get_ifd(EXIF_IFD)
    ifd[DATE_TIME_ORIGINAL] = exif_date(taken)
    ifd[0x9004] = exif_date(taken)  # DateTimeDigitized
    ifd[0x9010] = ifd[OFFSET_TIME_ORIGINAL] = ifd[0x9012] = "+00:00"  # OffsetTime, …Original, …Digitized
    return exif.tobytes()


def _encode(im: Image.Image, fmt: str, exif: bytes) -> bytes:
    out = io.BytesIO()
    if fmt == "heic":
        im.save(out, "HEIF", quality=HEIC_QUALITY, exif=exif, enc_params=dict(HEIC_PARAMS))
    else:
        im.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif)
    return out.getvalue()


def _scene(key: bytes, w: int, h: int) -> Image.Image:
    """A landscape-like picture: every colour, place and grain drawn from ``key``."""
    r = random.Random(key)
    xof = blake3.blake3(key)

    def colour(lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
        return (r.randint(lo, hi), r.randint(lo, hi), r.randint(lo, hi))

    horizon = int(h * r.uniform(0.35, 0.7))
    im = Image.new("RGB", (w, h))
    ramp = Image.linear_gradient("L")
    for top, bottom, y0, y1 in ((colour(60), colour(120), 0, horizon), (colour(20, 160), colour(0, 90), horizon, h)):
        if y1 > y0:
            band = Image.composite(Image.new("RGB", (w, y1 - y0), bottom), Image.new("RGB", (w, y1 - y0), top),
                                   ramp.resize((w, y1 - y0)))  # fmt: skip
            im.paste(band, (0, y0))
    draw = ImageDraw.Draw(im)
    sun_r = int(min(w, h) * r.uniform(0.04, 0.12))
    sx, sy = r.randrange(w), r.randrange(max(1, horizon))
    draw.ellipse((sx - sun_r, sy - sun_r, sx + sun_r, sy + sun_r), fill=colour(180))
    for _ in range(r.randint(2, 4)):  # hills: a jagged ridge down to the bottom edge
        base, amp, n = horizon + r.randint(-h // 10, h // 8), r.randint(h // 20, h // 5), r.randint(4, 12)
        ridge = [(w * k // n, base - r.randint(0, amp)) for k in range(n + 1)]
        draw.polygon([*ridge, (w, h), (0, h)], fill=colour(0, 140))
    for _ in range(r.randint(3, 9)):  # trees, rocks, buildings
        x, y = r.randrange(w), r.randint(horizon, h)
        bw, bh = r.randint(w // 40, w // 8), r.randint(h // 20, h // 3)
        if r.random() < 0.5:
            draw.ellipse((x - bw, y - bh, x + bw, y), fill=colour(0, 200))
        else:
            draw.rectangle((x - bw, y - bh, x + bw, y), fill=colour(0, 220))
    light = Image.frombytes("RGB", (12, 9), xof.digest(12 * 9 * 3)).resize((w, h), Image.Resampling.BICUBIC)
    im = Image.blend(im, light, 0.2)
    grain = Image.frombytes("L", (w, h), xof.digest(w * h, seek=4096)).point(lambda v: v * GRAIN // 255)
    return ImageChops.add(im, Image.merge("RGB", (grain, grain, grain)), 1.0, -(GRAIN // 2))


def _layout(key: bytes, fmt: str, coded: bytes, size: int) -> Iterator[bytes]:
    """The file's parts in order: the coded picture split where the pad goes, the pad's framing and its bytes."""
    pad = size - len(coded)
    xof = blake3.blake3(key=key)
    if fmt == "heic":
        yield coded
        yield pad.to_bytes(4, "big") + b"free"
        yield from _xof(xof, 0, pad - 8)
        return
    at = _after_app_segments(coded)
    yield coded[:at]
    off = 0
    while pad >= 4:
        n = min(_SEGMENT, pad - 4)
        if 0 < pad - 4 - n < 4:  # leave at least a whole (empty) segment for the remainder
            n -= 4
        yield _PAD_MARKER + (n + 2).to_bytes(2, "big")
        yield from _xof(xof, off, n)
        off += n
        pad -= n + 4
    yield b"\xff" * pad  # fill bytes before the next marker (JPEG allows any number)
    yield coded[at:]


def _after_app_segments(jpeg: bytes) -> int:
    """Offset of the first marker after SOI and the APPn segments that follow it (where DQT starts)."""
    at = 2
    while jpeg[at] == 0xFF and 0xE0 <= jpeg[at + 1] <= 0xEF:
        at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return at


def _xof(xof: blake3.blake3, off: int, n: int) -> Iterator[bytes]:
    step = 1 << 20
    for k in range(0, n, step):
        yield xof.digest(length=min(step, n - k), seek=off + k)


def _pieces(parts: Iterable[bytes], piece: int) -> Iterator[bytes]:
    buf = bytearray()
    for part in parts:
        buf += part
        while len(buf) >= piece:
            yield bytes(buf[:piece])
            del buf[:piece]
    if buf:
        yield bytes(buf)
