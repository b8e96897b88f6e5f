"""The one place that knows the chunking policy: which content gets which FastCDC parameters, and what is compressed.

Files change in two different ways, so they are cut two different ways:
- `fine` — SQLite databases, plists, XML/JSON/text: they change in place a page at a time, so small chunks
  (FastCDC min 2 KiB / avg 8 KiB / max 64 KiB) keep a day's change to a few percent of the file; they are zstd
  compressed.
- `coarse` — photos, videos and anything else binary: they never change after capture, so large chunks
  (min 256 KiB / avg 1 MiB / max 8 MiB) keep the index small; media formats are never compressed.
The kind is sniffed from the first bytes of a file (backup folders name files by hash, so there is no extension).

`StreamChunker` is push-based, because device uploads arrive as blocks we do not control. It cuts as soon as
CUT_AHEAD (2 MiB; a fine profile's max + average, 72 KiB) of a file is buffered, so it typically keeps ~3 MiB of a
coarse file in memory, whatever the file's size, and at most max chunk size + average + FEED_ROOM (10 MiB for
coarse) while one chunk runs longer than that. The buffer is its own (an anonymous map whose pages are mapped as they
are written, unmapped after `finish`). Keeping one for the next file spared media imports some page faults but held
up to 11 MiB through the small files between them: the peak of a 120 000-file import rose 152 -> 159 MB. The cut
points it produces are exactly those of `FastCDC.cut_buf` over the whole file: a cut is decided by the bytes from
the chunk's start up to at most max_size, so every chunk but the last in the buffer is final, however short the
buffer (and the last, which may run on, is cut again with what follows).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from .packs import anonymous_map


@dataclass(frozen=True, slots=True)
class ChunkProfile:
    name: str
    min_size: int
    avg_size: int
    max_size: int

    def to_config(self) -> list[int]:
        return [self.min_size, self.avg_size, self.max_size]


FINE = ChunkProfile("fine", 2 << 10, 8 << 10, 64 << 10)
COARSE = ChunkProfile("coarse", 256 << 10, 1 << 20, 8 << 20)
PROFILES = {p.name: p for p in (FINE, COARSE)}
SNIFF_LEN = 64 << 10  # bytes seen before the profile is chosen

_STRUCTURED = (b"SQLite format 3\x00", b"bplist0", b"<?xml", b"<!DOCTYPE plist", b"<plist")
_MEDIA = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"PK\x03\x04", b"\x1f\x8b", b"(\xb5/\xfd", b"ID3", b"RIFF", b"fLaC")


@dataclass(frozen=True, slots=True)
class Policy:
    profile: ChunkProfile
    compress: bool


# Per thread: one FastCDC per profile and the sniffing compressor; building one per small file costs as much as using it.
_cutters = threading.local()
_TEXT_SAMPLE = 4096
_CONTROL = bytes(range(32)).replace(b"\t", b"").replace(b"\n", b"").replace(b"\r", b"")


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes read as UTF-8 text without control characters. One leading `{` is not enough:
    1 random file in 128 starts with `{` or `[`, and encrypted iOS backup files are random."""
    sample = head[:_TEXT_SAMPLE]
    if len(sample.translate(None, _CONTROL)) != len(sample):
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(sample) - 3  # only a multi-byte character cut off by the sample's end
    return True


def _sniffer() -> zstandard.ZstdCompressor:
    """This thread's level-1 compressor for the sample (a context is not thread-safe; one per file costs more than
    compressing a small file's sample)."""
    made = _cutters.__dict__
    if (cctx := made.get("sniff")) is None:
        cctx = made["sniff"] = zstandard.ZstdCompressor(level=1)
    return cctx


# The policies there are, made once: choose_policy runs once per file (a frozen dataclass costs ~1.5 us to make).
_FINE_COMPRESSED, _COARSE_STORED = Policy(FINE, True), Policy(COARSE, False)
_COARSE_COMPRESSED = Policy(COARSE, True)


def choose_policy(head: bytes) -> Policy:
    """Pick chunking and compression for a file from its first bytes (up to SNIFF_LEN)."""
    if head.startswith(_STRUCTURED) or (head[:1] in (b"{", b"[") and _is_text(head)):
        return _FINE_COMPRESSED
    if head.startswith(_MEDIA) or head[4:8] == b"ftyp" or len(head) < 64:
        return _COARSE_STORED
    # Unknown binary: compress only if a sample of it actually shrinks (encrypted iOS backups never do).
    sample = head[:SNIFF_LEN]
    if len(_sniffer().compress(sample)) >= 0.9 * len(sample):
        return _COARSE_STORED
    return _FINE_COMPRESSED if head.isascii() else _COARSE_COMPRESSED


FEED_ROOM = 1 << 20  # room past the cut threshold, so a block of up to this much is copied in one go
HUGE_PAGE = 2 << 20
# Cut once this much is buffered (or max + average, if smaller). A video's import held the whole 10 MiB buffer
# mapped (cut only at 9 MiB) for as long as the file took: at 1 000 000 files, where the Manifest parse runs beside
# the whole import, that was the import's peak (parent ~57 MB anonymous while an 86 MB video streamed, 44-46 between).
# Cutting at 2 MiB keeps ~3-4 MiB of it mapped (whole huge pages), at the same CPU (256 MiB chunked: 0.13-0.18 s
# either way); a chunk's bytes are copied out of the buffer once either way.
CUT_AHEAD = 2 << 20


def _buffer(size: int) -> mmap.mmap:
    """A chunker's buffer: pages mapped as written. One of whole 2 MiB huge pages (the coarse profile's 10 MiB) asks
    for transparent huge pages: filling a fresh map 4 KiB page by page faulted and zeroed each one, ~1.2 GB/s read
    into it against ~3 GB/s in 2 MiB pages (2.2 GB phone's media files). A file holds ≤ 2 MiB more than its bytes
    while it is read and its chunks sealed, none once they are."""
    buf = anonymous_map(size)
    if size % HUGE_PAGE == 0 and (advice := getattr(mmap, "MADV_HUGEPAGE", None)) is not None:
        with suppress(OSError):  # a kernel built without transparent huge pages refuses the advice (EINVAL)
            buf.madvise(advice)
    return buf


class StreamChunker:
    """Cut a stream fed in arbitrary blocks into FastCDC chunks with bounded memory: one buffer of max + average +
    FEED_ROOM (10 MiB for coarse), cut from CUT_AHEAD on, compacted in place, each chunk copied out of it once."""

    def __init__(self, profile: ChunkProfile) -> None:
        from pyfastcdc import FastCDC  # here, not at the top: reading a vault (extract, export) never cuts

        self._cdc = FastCDC(profile.avg_size, min_size=profile.min_size, max_size=profile.max_size)
        # Room for a full max-size chunk plus some slack and a block: once that much is buffered, the first chunk is
        # final (none is longer than max_size), so a cut always frees room. Cutting starts earlier, at CUT_AHEAD: a cut
        # that finds only one chunk (a chunk running past the buffer) frees nothing and the buffer fills on.
        self._room = profile.max_size + profile.avg_size + FEED_ROOM
        self._threshold = min(profile.max_size + profile.avg_size, CUT_AHEAD)
        self._cut_at = self._threshold  # past a cut that found no final chunk: FEED_ROOM more (a rescan per MiB)
        self._buf: mmap.mmap | None = None  # taken at the first block: a file that is never fed holds none
        self._len = 0

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        if self._buf is None:
            self._buf = _buffer(self._room)
        buf, room = self._buf, len(self._buf)
        with memoryview(data) as view:
            pos, n = 0, view.nbytes
            while pos < n:
                take = min(n - pos, room - self._len)
                buf[self._len : self._len + take] = view[pos : pos + take]
                self._len += take
                pos += take
                if self._len >= self._cut_at:
                    yield from self._cut()

    def read_from(self, f: BinaryIO, limit: int) -> int:
        """Read up to `limit` bytes of `f` straight into the buffer (no block object, no copy); 0 at its end. The
        chunks it completes come from `ready()`."""
        if self._buf is None:
            self._buf = _buffer(self._room)
        want = min(limit, len(self._buf) - self._len)
        with memoryview(self._buf) as whole:
            n = f.readinto(whole[self._len : self._len + want]) or 0
        self._len += n
        return n

    def ready(self) -> Iterator[bytes]:
        """The chunks that are final once the buffer holds the cut threshold (none before)."""
        if self._len >= self._cut_at:
            yield from self._cut()

    def _cut(self) -> Iterator[bytes]:
        """Every chunk of the buffer but the last (final: see the module docstring); the last moves to the front."""
        buf = self._buf
        with memoryview(buf) as whole:
            # Take only offsets from the cutter: its chunks are views into the buffer, which is overwritten next.
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(whole[: self._len])]
            for off, length in cuts[:-1]:
                yield bytes(whole[off : off + length])
        last = cuts[-1][0]
        buf.move(0, last, self._len - last)
        self._len -= last
        # Cut again once the buffer is past the threshold; after a cut that freed nothing (one chunk running on), only
        # once FEED_ROOM more came, so small blocks do not rescan the buffer each.
        self._cut_at = self._threshold if last else min(self._len + FEED_ROOM, self._room)

    def finish(self) -> Iterator[bytes | memoryview]:
        """The last chunks, as read-only views of the buffer, not copies: nothing writes it again (a file of up to
        the cut threshold, 2 MiB, is chunked only here, and its copy per chunk was as much work as reading it).
        The buffer is unmapped once the last view of it goes (BlobSink seals a new blob from its view)."""
        buf, self._buf = self._buf, None
        if buf is None:
            return
        if self._len:
            whole = memoryview(buf).toreadonly()
            for off, length in [(c.offset, c.length) for c in self._cdc.cut_buf(whole[: self._len])]:
                yield whole[off : off + length]
        self._len, self._cut_at = 0, self._threshold  # ready for another file, cut from CUT_AHEAD on again


def chunk_bytes(data: bytes, profile: ChunkProfile) -> list[bytes | memoryview]:
    """Cut a whole buffer (import's small files, tests): the same chunks as a StreamChunker fed the same bytes; of a
    bytes object, read-only views of it (no copy), else copies."""
    made = _cutters.__dict__
    cdc = made.get(profile)
    if cdc is None:
        from pyfastcdc import FastCDC

        cdc = made[profile] = FastCDC(profile.avg_size, min_size=profile.min_size, max_size=profile.max_size)
    if isinstance(data, bytes):
        view = memoryview(data)
        return [view[c.offset : c.offset + c.length] for c in cdc.cut_buf(data)]
    return [bytes(c.data) for c in cdc.cut_buf(data)]
