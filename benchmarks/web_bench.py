"""The web view at scale: the first screen of a 20 000-photo camera roll, and `find` across versions.

    .venv/bin/python benchmarks/web_bench.py [--photos 20000] [--days 3] [--find-files 0] [--workdir DIR]

Roll: a synthetic phone (the emulator's generator, its camera roll replaced by `--photos` of the generator's real
JPEGs at 12 KiB each, 1 % of them deleted and 0.5 % added each day) is written as MobileSync folders and imported
on `--days` days. Then, with the real `phonevault serve` (a new process each time, over the same vault and cache):
  cold   the first request of the camera roll after import (reads every version's catalog and tree once and each
         photo's EXIF date, caches them sealed), then the first screen's thumbnails made from the photos' bytes;
  warm   a new server on that warm cache: the photos page (first PAGE items) and the first screen's thumbnails
         (FIRST_SCREEN of them, fetched one after another as a worst case; a browser fetches several at once).
The target is warm < 1 s. Reference in the same run: a request of the devices page on the same warm server.
Find (`--find-files N`, e.g. 300000): a phone with N small plists, imported twice (day 0 and 1), then
`phonevault find` of a name and of a glob once the search indexes are cached (wall time of the command), against
`phonevault snapshots` (the CLI's start, opening the vault, reading the logs) as the reference, and the same
searches in a process that has the vault open (the web view's search box). Results print as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.sync.emulator.days import regular_file, with_directories
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.find import find
from phonevault.sync.mobilesync import import_folder

PASSWORD = "bench"
FIRST_SCREEN = 48  # tiles visible on a 1920 × 1080 screen at 168 px, with a margin
PHOTO_BYTES = 12 * 1024
PAGE_PATH = "/device/{key}/photos"


class RollPhone(SyntheticPhone):
    """The emulator's phone with its camera roll replaced by `photos` small photos, changing a little each day. They
    are the generator's own real JPEGs (EXIF dates included: the first request reads them), at `PHOTO_BYTES` each so
    20 000 of them fit this machine; the day they were taken is spread over 400 days before day 0."""

    def __init__(self, photos: int, **kw) -> None:
        super().__init__(**kw)
        self.photos = photos

    def _roll(self, day: int) -> list[int]:
        alive = list(range(self.photos))
        extra = self.photos
        for d in range(1, day + 1):
            drop = max(1, len(alive) // 100)
            alive = [n for k, n in enumerate(alive) if (k * 7919 + d) % len(alive) >= drop]
            add = max(1, self.photos // 200)
            alive += list(range(extra, extra + add))
            extra += add
        return alive

    def files(self, day: int = 0):
        base = [f for f in super().files(day) if f.entry.flags == 1 and "/DCIM/" not in f.entry.relative_path]
        t0 = self.backup_time(0) - 86_400 * 400
        for n in self._roll(day):
            path = f"Media/DCIM/{100 + n // 1000}APPLE/IMG_{n:05d}.JPG"
            when = t0 + n * 1800
            base.append(regular_file("CameraRollDomain", path, "jpg", PHOTO_BYTES, when, 0, taken=when))
        return with_directories(sorted(base, key=lambda f: (f.entry.domain, f.entry.relative_path)))


class Served:
    def __init__(self, env: dict[str, str]) -> None:
        exe = Path(sys.executable).with_name("phonevault")
        self.proc = subprocess.Popen([str(exe), "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
        found = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stdout:
                if m := re.match(r"open: (http://\S+)", line.strip()):
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120) or not self.url:
            self.stop()
            raise SystemExit("phonevault serve did not start")
        self.base, _, self.token = self.url.partition("/?token=")

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.base + path, headers={"Authorization": "token " + self.token})
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def first_screen(server: Served, key: str) -> dict:
    t0 = time.perf_counter()
    html = server.get(PAGE_PATH.format(key=key)).decode()
    t_page = time.perf_counter() - t0
    thumbs = re.findall(r'src="(/device/[0-9a-f]+/thumb/[0-9a-f]+)"', html)[:FIRST_SCREEN]
    for t in thumbs:
        server.get(t)
    total = time.perf_counter() - t0
    return {"page_s": round(t_page, 3), "thumbs": len(thumbs), "first_screen_s": round(total, 3)}


def bench_roll(work: Path, photos: int, days: int) -> dict:
    env = dict(os.environ, PHONEVAULT_REPO=str(work / "vault"), PHONEVAULT_PASSWORD=PASSWORD)
    env["PHONEVAULT_CACHE_DIR"] = str(work / "cache")
    phone = RollPhone(photos, seed=11, size=8 * 2**20)
    repo = Repository.init(LocalBackend(work / "vault"), PASSWORD, scrypt_n=2**14, cache_root=work / "cache")
    t0 = time.perf_counter()
    try:
        for day in range(days):
            folder = phone.write_backup(work / "folder", day)
            import_folder(repo, folder)
        key = repo.device_keys()[0]
    finally:
        repo.close()
    out: dict = {"photos_day0": photos, "days": days, "import_s": round(time.perf_counter() - t0, 1)}
    server = Served(env)
    try:
        out["cold"] = first_screen(server, key)
        out["photos_listed"] = json.loads(server.get(f"/api/device/{key}/photos?limit=1"))["total"]
    finally:
        server.stop()
    server = Served(env)
    try:
        out["warm"] = first_screen(server, key)
        t0 = time.perf_counter()
        server.get("/")
        out["reference_devices_page_s"] = round(time.perf_counter() - t0, 3)
        out["warm_again"] = first_screen(server, key)  # the same server: its camera roll is held in memory
    finally:
        server.stop()
    return out


def bench_find(work: Path, files: int) -> dict:
    env = dict(os.environ, PHONEVAULT_REPO=str(work / "vault"), PHONEVAULT_PASSWORD=PASSWORD)
    env["PHONEVAULT_CACHE_DIR"] = str(work / "cache")
    phone = SyntheticPhone(seed=7, size=256 * 2**20, many_files=files)
    repo = Repository.init(LocalBackend(work / "vault"), PASSWORD, scrypt_n=2**14, cache_root=work / "cache")
    t0 = time.perf_counter()
    try:
        for day in range(2):
            import_folder(repo, phone.write_backup(work / "folder", day))
    finally:
        repo.close()
    out: dict = {"files": files, "import_s": round(time.perf_counter() - t0, 1)}
    exe = str(Path(sys.executable).with_name("phonevault"))

    def timed(*args: str) -> float:
        t = time.perf_counter()
        subprocess.run([exe, *args], env=env, check=True, stdout=subprocess.DEVNULL)
        return round(time.perf_counter() - t, 3)

    out["first_find_s"] = timed("find", "IMG_0003")  # builds each version's search index from its catalog
    out["find_name_s"] = timed("find", "IMG_0003")
    out["find_glob_s"] = timed("find", "*.HEIC")
    out["reference_snapshots_s"] = timed("snapshots")  # the CLI's floor: start, open the vault, read the logs
    # The search itself, in one process that has the vault open already (what the web view's search box costs).
    repo = Repository.open(LocalBackend(work / "vault"), PASSWORD, cache_root=work / "cache")
    try:
        views = repo.devices()
        for name, pattern in (("name", "IMG_0003"), ("glob", "*.HEIC")):
            t = time.perf_counter()
            find(repo, views, pattern)
            out[f"in_process_{name}_s"] = round(time.perf_counter() - t, 3)
    finally:
        repo.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--find-files", type=int, default=0, help="e.g. 300000; 0 skips the find benchmark")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "work" / "web")
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    results: dict = {}
    if args.photos:
        (args.workdir / "roll").mkdir(parents=True)
        results["roll"] = bench_roll(args.workdir / "roll", args.photos, args.days)
        shutil.rmtree(args.workdir / "roll")
    if args.find_files:
        (args.workdir / "find").mkdir(parents=True)
        results["find"] = bench_find(args.workdir / "find", args.find_files)
        shutil.rmtree(args.workdir / "find")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
