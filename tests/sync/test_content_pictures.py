"""The synthetic phone's camera roll is real pictures: they decode, carry the generator's capture dates in EXIF, are
exactly their catalogued size, deterministic, unique per file and as incompressible as a real phone's photos."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageStat

from phonevault.sync.emulator.content import PIECE, FileBytes
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.photodates import capture_time

MiB = 2**20
TAKEN, EDITED = 1_700_000_000, 1_700_090_000


def photo(fb: FileBytes, kind: str, size: int, rev: int = 0, path: str = "Media/DCIM/100APPLE/IMG_0001") -> bytes:
    pieces = list(fb.media("CameraRollDomain", f"{path}.{kind}", kind, size, rev, TAKEN, EDITED))
    assert all(len(p) <= PIECE for p in pieces)
    return b"".join(pieces)


def exif_of(data: bytes) -> tuple[str, str, str]:
    """(DateTimeOriginal, DateTime, Model) as Pillow's own decoder reads them: the oracle for `photodates`."""
    with Image.open(io.BytesIO(data)) as im:
        exif = im.getexif()
        return exif.get_ifd(0x8769)[0x9003], exif[0x0132], exif[0x0110]


def stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y:%m:%d %H:%M:%S")


def test_photos_are_real_pictures_with_their_dates() -> None:
    fb = FileBytes(5, 64 * MiB, 100, "iPhone 13")
    for kind, fmt, size in (("heic", "HEIF", 2_600_000), ("jpg", "JPEG", 3_200_000), ("thumb", "JPEG", 40_000)):
        data = photo(fb, kind, size)
        assert len(data) == size
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == fmt and min(im.size) >= 64
            # photo-like: not one flat colour (gradients, shapes and grain give every channel a spread)
            assert min(ImageStat.Stat(im.convert("RGB")).stddev) > 10
        assert exif_of(data) == (stamp(TAKEN), stamp(EDITED), "iPhone 13")
        assert capture_time(iter([data])) == TAKEN
        # streamed in pieces as the vault reads a file, the date is found all the same
        assert capture_time(data[k : k + 4096] for k in range(0, len(data), 4096)) == TAKEN
    assert photo(fb, "jpg", 100_000).endswith(b"\xff\xd9") and photo(fb, "jpg", 100_000)[:4] == b"\xff\xd8\xff\xe1"
    assert photo(fb, "heic", 100_000)[4:12] == b"ftypheic"


def test_same_seed_same_bytes_and_every_photo_its_own() -> None:
    a, b = FileBytes(5, 64 * MiB, 100), FileBytes(5, 64 * MiB, 100)
    assert photo(a, "heic", 500_000) == photo(b, "heic", 500_000)
    assert photo(a, "jpg", 500_000) == photo(b, "jpg", 500_000)
    others = [photo(a, "heic", 500_000, rev=1), photo(a, "heic", 500_000, path="Media/DCIM/100APPLE/IMG_0002")]
    first = photo(a, "heic", 500_000)
    for other in others:
        assert other != first
        # no shared run of bytes a chunker could deduplicate (beyond the format's own header)
        assert not any(first[k : k + 64] in other for k in range(4096, len(first) - 64, 50_000))


def test_media_are_as_incompressible_as_a_phones() -> None:
    fb = FileBytes(6, 64 * MiB, 100)
    data = b"".join(photo(fb, k, 1_500_000, path=f"Media/DCIM/100APPLE/IMG_{k}") for k in ("heic", "jpg", "thumb"))
    packed = zstandard.ZstdCompressor(level=3).compress(data)
    assert len(packed) >= 0.98 * len(data)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["heic", "jpg", "thumb"]), size=st.integers(1, 600_000))
def test_any_size_is_exact_and_a_picture_when_one_fits(kind: str, size: int) -> None:
    data = photo(FileBytes(7, 64 * MiB, 100), kind, size)
    assert len(data) == size
    if size >= 8 * 1024:  # the phone's smallest thumbnail: always a real, dated picture
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        assert capture_time(iter([data])) == TAKEN


def test_the_phone_writes_the_days_it_says_and_an_edit_keeps_the_capture_date() -> None:
    phone = SyntheticPhone(seed=4, size=12 * MiB)
    day0 = {f.entry.relative_path: f for f in phone.files(0)}
    day1 = {f.entry.relative_path: f for f in phone.files(1)}
    originals = [f for f in day1.values() if f.kind in ("heic", "jpg")]
    assert originals and all(f.taken for f in originals)
    edited = [f for f in originals if f.entry.relative_path in day0 and f.rev == 1]
    assert edited, "day 1 edits a photo"
    for f in originals:
        data = b"".join(phone.open(f))
        assert capture_time(iter([data])) == f.taken
        assert exif_of(data)[1] == stamp(f.entry.mtime)
    e = edited[0]
    assert e.taken == day0[e.entry.relative_path].taken < e.entry.mtime


def test_the_bytes_do_not_depend_on_the_process() -> None:
    """Another interpreter (fresh encoder state, x265's thread pool sized anew) writes the same bytes: nothing but
    the seed decides them."""
    import hashlib
    import subprocess
    import sys

    code = (
        "import hashlib; from phonevault.sync.emulator.content import FileBytes;"
        "fb = FileBytes(5, 64 * 2**20, 100);"
        "print(hashlib.sha256(b''.join(b''.join(fb.media('CameraRollDomain', 'Media/DCIM/100APPLE/IMG_0001.' + k, k,"
        " 400_000, 0, 1_700_000_000, 1_700_090_000)) for k in ('heic', 'jpg', 'thumb'))).hexdigest())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    fb = FileBytes(5, 64 * MiB, 100)
    here = hashlib.sha256(b"".join(photo(fb, k, 400_000) for k in ("heic", "jpg", "thumb"))).hexdigest()
    assert there.stdout.strip() == here
