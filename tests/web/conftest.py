"""A vault backed up from the synthetic phone on days 0, 1 and 2 (its photos are real pictures), shared by the web
tests.

Day 1 deletes IMG_0002.MOV and IMG_0003.HEIC and edits IMG_0004.JPG; day 2 deletes IMG_0005.HEIC and IMG_0006.MOV
(asserted by the tests that use them, not assumed). `web_vault` is built once per session and only ever read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from phonevault.store.backends.local import LocalBackend
from phonevault.store.backends.readonly import ReadOnlyBackend
from phonevault.store.repository import Repository
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.mobilesync import import_folder
from tests.conftest import FAST_SCRYPT, PASSWORD

PHONE_SIZE = 4 * 2**20
SEED = 3


@dataclass(frozen=True)
class WebVault:
    root: Path
    vault: Path
    days: tuple[dict[str, bytes], ...]  # per day: domain path -> bytes of every camera-roll file in that day's folder
    folders: tuple[Path, ...]
    taken: dict[str, int]  # domain path of every camera-roll original of any day -> when the generator says it was shot
    mtimes: tuple[dict[str, int], ...]  # per day: domain path -> the file's mtime

    def env(self, cache: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEVAULT")}
        env.update(PHONEVAULT_PASSWORD=PASSWORD, PHONEVAULT_REPO=str(self.vault), PHONEVAULT_CACHE_DIR=str(cache))
        env.update(HOME=str(self.root / "home"), COLUMNS="250")
        return env

    def open(self, cache: Path) -> Repository:
        return Repository.open(ReadOnlyBackend(LocalBackend(self.vault)), PASSWORD, cache_root=cache)


def _camera_roll_files(folder: Path) -> dict[str, bytes]:
    import sqlite3

    db = sqlite3.connect(f"file:{folder / 'Manifest.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT fileID, domain, relativePath FROM Files WHERE flags = 1 AND domain = 'CameraRollDomain' "
            "AND relativePath LIKE 'Media/DCIM/%'"
        ).fetchall()
    finally:
        db.close()
    return {f"{d}/{r}": (folder / fid[:2] / fid).read_bytes() for fid, d, r in rows}


@pytest.fixture(scope="session")
def web_vault(tmp_path_factory) -> WebVault:
    root = tmp_path_factory.mktemp("web")
    phone = SyntheticPhone(seed=SEED, size=PHONE_SIZE)
    repo = Repository.init(LocalBackend(root / "vault"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=root / "cache")
    days, folders, taken, mtimes = [], [], {}, []
    try:
        for day in range(3):
            folder = phone.write_backup(root / f"day{day}", day)
            import_folder(repo, folder)
            days.append(_camera_roll_files(folder))
            folders.append(folder)
            dcim = [f for f in phone.files(day) if f.entry.relative_path.startswith("Media/DCIM/") and f.taken]
            taken.update({f"{f.entry.domain}/{f.entry.relative_path}": f.taken for f in dcim})
            mtimes.append({f"{f.entry.domain}/{f.entry.relative_path}": f.entry.mtime for f in dcim})
    finally:
        repo.close()
    return WebVault(root, root / "vault", tuple(days), tuple(folders), taken, tuple(mtimes))
