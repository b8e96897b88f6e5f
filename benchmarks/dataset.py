"""The benchmark dataset: a synthetic phone's MobileSync folder on day 0 and day 2, and how results are verified.

The phone is `phonevault.sync.emulator.phone.SyntheticPhone(seed, size, many_files=…)`, the project's one
generator; its `write_backup(root, day)` makes `root/<udid>/` the folder a host holds after that day's backup,
incrementally (files already right are kept), so moving the folder between day 0 and day 2 rewrites only what changed.

Verification: a folder is summarised as {relative path: BLAKE3 of its bytes}; a restore passes when its summary
equals the source's. The single file extracted by every tool is one photo that exists unchanged on both days.

Realism (`media_check`): the camera roll must be as incompressible as a real phone's (JPEG/HEIC/HEVC are already
compressed): zstd level 3 over every photo, thumbnail and video, each file compressed on its own, must save at most
`MAX_MEDIA_SAVING` (2 %), else the comparison would flatter whichever tool compresses. Run alone, this module
generates a phone in memory and prints that figure with the generator's speed:
    .venv/bin/python benchmarks/dataset.py --size 6GiB

Prepared data (`prepare`): a case's day-0 folder can be written ahead of a run, under
`<workdir>/data/phone-<size>-<many_files>/` with a `prepared.json` beside it (how long it took, its bytes, files and
blocks on disk), so an idle window is spent measuring. A run always writes day 0 over it first (incremental: files
with the right size and mtime are kept, the metadata is rewritten), so a folder written by an older generator still
ends up byte-identical to the run's own:
    nice -n 19 .venv/bin/python benchmarks/dataset.py --prepare --size 20GB --workdir benchmarks/work
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard
from measure import disk_usage  # noqa: F401  (run.py and the tests take it from here)

from phonevault.sync.emulator.phone import SyntheticPhone

SEED = 7
READ = 1 << 20
MEDIA_KINDS = ("heic", "jpg", "thumb", "mov", "video")
MAX_MEDIA_SAVING = 0.02


@dataclass(frozen=True, slots=True)
class Photo:
    """The one file every tool extracts: its domain path (phonevault) and its path in the backup folder (peers)."""

    domain_path: str
    backup_path: str  # <udid>/<xx>/<fileID>
    size: int


@dataclass(slots=True)
class Dataset:
    """A synthetic phone written under `root`; `day` is the day the folder currently holds."""

    phone: SyntheticPhone
    root: Path
    day: int = -1

    @property
    def folder(self) -> Path:
        return self.root / self.phone.udid

    def at_day(self, day: int) -> Path:
        if day != self.day:
            self.phone.write_backup(self.root, day)
            self.day = day
        return self.folder

    def photo(self) -> Photo:
        """The largest HEIC present and unchanged on day 0 and day 2 (so both restores must hold it)."""
        day0 = {f.entry.file_id: f for f in self.phone.files(0) if f.kind == "heic"}
        kept = [f.entry for f in self.phone.files(2) if f.entry.file_id in day0 and day0[f.entry.file_id] == f]
        e = max(kept, key=lambda e: (e.size, e.file_id))
        return Photo(f"{e.domain}/{e.relative_path}", f"{self.phone.udid}/{e.file_id[:2]}/{e.file_id}", e.size)


def new_media_bytes(phone: SyntheticPhone, day: int = 2) -> int:
    """Bytes of photos, thumbnails and videos on ``day`` that day 0 did not hold: what every tool must store anew
    (the floor under the day's bytes added, which issue 11's day-2 target measures above)."""
    day0 = {f.entry.file_id: f for f in phone.files(0) if f.kind in MEDIA_KINDS}
    return sum(f.entry.size for f in phone.files(day) if f.kind in MEDIA_KINDS and day0.get(f.entry.file_id) != f)


class UnrealisticMedia(ValueError):
    """zstd saves more on the synthetic camera roll than it would on a real phone's."""


def media_check(phone: SyntheticPhone, day: int = 0, limit: int | None = None) -> dict:
    """zstd level 3 over the phone's media on ``day`` (at most ``limit`` bytes of them, files in catalogue order,
    each compressed on its own), generated in memory, with the time generating them took. Raises UnrealisticMedia
    when zstd saves more than `MAX_MEDIA_SAVING`."""
    cctx = zstandard.ZstdCompressor(level=3)
    raw = packed = files = 0
    gen_s = 0.0
    for f in phone.files(day):
        if f.kind not in MEDIA_KINDS or (limit is not None and raw >= limit):
            continue
        comp = cctx.compressobj()
        pieces = phone.open(f)
        while True:
            t = time.perf_counter()
            piece = next(pieces, None)
            gen_s += time.perf_counter() - t
            if piece is None:
                break
            raw += len(piece)
            packed += len(comp.compress(piece))
        packed += len(comp.flush())
        files += 1
    saved = 1 - packed / raw if raw else 0.0
    out = {"media_files": files, "media_bytes": raw, "zstd3_bytes": packed, "saved": round(saved, 5),
           "generate_mb_s": round(raw / 1e6 / gen_s, 1) if gen_s else None}  # fmt: skip
    if saved > MAX_MEDIA_SAVING:
        raise UnrealisticMedia(f"zstd -3 saves {saved:.1%} of the synthetic media (a real phone's: ≤ 2 %): {out}")
    return out


def make_dataset(root: Path, size: int, many_files: int = 0) -> Dataset:
    return Dataset(SyntheticPhone(SEED, size, many_files=many_files or False), root)


def data_root(workdir: Path, size: int, many_files: int = 0) -> Path:
    """Where a case's source folder lives (`<root>/<udid>/`), prepared ahead or written by the run."""
    return workdir / "data" / f"phone-{size}-{many_files}"


def prepare(workdir: Path, size: int, many_files: int = 0) -> dict:
    """Write a case's day-0 folder under `data_root` and record what it took in `prepared.json` next to it."""
    root = data_root(workdir, size, many_files)
    root.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(root, size, many_files)
    start = time.perf_counter()
    ds.at_day(0)
    nbytes, files, blocks = disk_usage(ds.folder)
    out = {"size": size, "many_files": many_files, "generate_s": round(time.perf_counter() - start, 1),
           "bytes": nbytes, "files": files, "disk_bytes": blocks}  # fmt: skip
    (root / "prepared.json").write_text(json.dumps(out) + "\n")
    return out


def file_digest(path: Path) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(READ):
            h.update(block)
    return h.hexdigest()


def _digest_tree(top: str, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        base = prefix if rel == "." else f"{prefix}{rel}/"
        for name in names:
            out[base + name] = file_digest(Path(dirpath) / name)
    return out


def folder_digest(folder: Path) -> dict[str, str]:
    """{relative path: BLAKE3} of every file under folder. The top-level folders (a backup's 256 shards) are
    hashed by one process per core: at a million small files this is per-file overhead, minutes on one core,
    and it is verification, outside every measured step."""
    out: dict[str, str] = {}
    subdirs = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                out[entry.name] = file_digest(Path(entry.path))
    if len(subdirs) < 8:
        for name in subdirs:
            out |= _digest_tree(str(folder / name), f"{name}/")
        return out
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for part in pool.map(_digest_tree, [str(folder / n) for n in subdirs], [f"{n}/" for n in subdirs]):
            out |= part
    return out


def file_list(folder: Path) -> dict[str, str]:
    """folder_digest's keys without reading a byte (each digest is ""): what a case needs of a folder it never
    compares."""
    return {
        (Path(dirpath) / name).relative_to(folder).as_posix(): ""
        for dirpath, _dirs, names in os.walk(folder)
        for name in names
    }


def compare(expected: dict[str, str], got: dict[str, str]) -> str:
    """'' when equal, else a one-line account of the first differences."""
    if expected == got:
        return ""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [
        f"{len(v)} {what} (e.g. {v[0]})"
        for what, v in (("missing", missing), ("extra", extra), ("differ", differ))
        if v
    ]
    return "; ".join(parts)


def find_dir(top: Path, name: str) -> Path | None:
    """Where a restore put the folder called `name` (peers nest it under the source's absolute path)."""
    for dirpath, dirs, _names in os.walk(top):
        if name in dirs:
            return Path(dirpath) / name
    return None


def find_file(top: Path, name: str) -> Path | None:
    for dirpath, _dirs, names in os.walk(top):
        if name in names:
            return Path(dirpath) / name
    return None


def main(argv: list[str] | None = None) -> int:
    from phonevault.cli.sizes import parse_size

    ap = argparse.ArgumentParser(description="zstd -3 on the benchmark phone's media, and the generator's speed")
    ap.add_argument("--size", default="6GiB")
    ap.add_argument("--day", type=int, default=0)
    ap.add_argument("--limit", default=None, help="stop after this many bytes of media")
    ap.add_argument("--prepare", action="store_true", help="write the day-0 folder under --workdir instead")
    ap.add_argument("--many-files", type=int, default=0, help="with --prepare: small files of the many-files case")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "work")
    args = ap.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.workdir.resolve(), parse_size(args.size), args.many_files)), flush=True)
        return 0
    phone = SyntheticPhone(SEED, parse_size(args.size))
    try:
        out = media_check(phone, args.day, parse_size(args.limit) if args.limit else None)
    except UnrealisticMedia as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({"size": args.size, "day": args.day, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
