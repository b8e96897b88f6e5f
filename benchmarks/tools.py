"""The tools compared: phonevault and its peers restic and borg, as command lines over one backup folder.

Each tool answers the same six questions as an argv (plus the working directory it must run in): init a
repository, back the folder up, restore everything, restore one file, check every byte. Passwords travel in the
environment (`PHONEVAULT_PASSWORD`, `RESTIC_PASSWORD`, `BORG_PASSPHRASE`); every cache and HOME lives in the
benchmark's work directory, so a run never touches the user's own repositories or caches.

Peers are backed up with the folder given relatively (`cwd` = the folder's parent), so both restore it as
`<target>/<udid>/`. Borg compresses with lz4 (`--compression lz4`) and encrypts with `repokey`; restic uses its
defaults (0.14: no compression, AES-256-CTR + Poly1305). Peers come from Debian packages, installed on demand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dataset import Photo

PASSWORD = "benchmark-password"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True, slots=True)
class Cmd:
    argv: Sequence[str]
    cwd: Path | None = None


class Tool(Protocol):
    name: str
    repo: Path
    env: dict[str, str]

    def init(self) -> Cmd: ...
    def backup(self, folder: Path) -> Cmd: ...
    def restore(self, target: Path) -> Cmd: ...
    def restore_one(self, photo: Photo, target: Path) -> Cmd: ...
    def check(self) -> Cmd: ...


def base_env(home: Path) -> dict[str, str]:
    """A clean environment; PYTHONPATH is kept so phonevault runs from the run's frozen copy of the code."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    if pythonpath := os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = pythonpath
    return env


@dataclass(slots=True)
class Phonevault:
    repo: Path
    work: Path
    name: str = "phonevault"
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = base_env(self.work / "home") | {
            "PHONEVAULT_REPO": str(self.repo),
            "PHONEVAULT_PASSWORD": PASSWORD,
            "PHONEVAULT_CACHE_DIR": str(self.work / "cache"),
        }

    def _pv(self, *args: str) -> list[str]:
        return [str(VENV_BIN / "phonevault"), *args]

    def init(self) -> Cmd:
        return Cmd(self._pv("init"))

    def backup(self, folder: Path) -> Cmd:
        return Cmd(self._pv("import", str(folder)))

    def restore(self, target: Path) -> Cmd:
        return Cmd(self._pv("export", "latest", "--to", str(target)))

    def restore_one(self, photo: Photo, target: Path) -> Cmd:
        return Cmd(self._pv("extract", "latest", photo.domain_path, "--to", str(target)))

    def check(self) -> Cmd:
        return Cmd(self._pv("check", "--read-data"))


@dataclass(slots=True)
class Restic:
    repo: Path
    work: Path
    name: str = "restic"
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = base_env(self.work / "home") | {
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD": PASSWORD,
            "RESTIC_CACHE_DIR": str(self.work / "cache"),
        }

    def init(self) -> Cmd:
        return Cmd(["restic", "init"])

    def backup(self, folder: Path) -> Cmd:
        return Cmd(["restic", "backup", "--quiet", folder.name], cwd=folder.parent)

    def restore(self, target: Path) -> Cmd:
        return Cmd(["restic", "restore", "latest", "--target", str(target)])

    def restore_one(self, photo: Photo, target: Path) -> Cmd:
        # A pattern without a leading "/" matches at any depth of the snapshot's tree.
        return Cmd(["restic", "restore", "latest", "--target", str(target), "--include", photo.backup_path])

    def check(self) -> Cmd:
        return Cmd(["restic", "check", "--read-data"])


@dataclass(slots=True)
class Borg:
    repo: Path
    work: Path
    name: str = "borg"
    env: dict[str, str] = field(init=False)
    archives: int = 0

    def __post_init__(self) -> None:
        self.env = base_env(self.work / "home") | {
            "BORG_REPO": str(self.repo),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.work / "borg-base"),
        }

    def init(self) -> Cmd:
        return Cmd(["borg", "init", "-e", "repokey"])

    def backup(self, folder: Path) -> Cmd:
        self.archives += 1
        return Cmd(["borg", "create", "--compression", "lz4", f"::a{self.archives}", folder.name], cwd=folder.parent)

    def restore(self, target: Path) -> Cmd:
        target.mkdir(parents=True, exist_ok=True)
        return Cmd(["borg", "extract", f"::a{self.archives}"], cwd=target)

    def restore_one(self, photo: Photo, target: Path) -> Cmd:
        target.mkdir(parents=True, exist_ok=True)
        return Cmd(["borg", "extract", f"::a{self.archives}", photo.backup_path], cwd=target)

    def check(self) -> Cmd:
        return Cmd(["borg", "check", "--verify-data"])


PEER_PACKAGES = {"restic": "restic", "borg": "borgbackup"}
_apt_updated = False


def ensure_peer(binary: str) -> str:
    """'' if `binary` is on PATH (installing its Debian package if missing), else why it is not."""
    global _apt_updated
    if shutil.which(binary):
        return ""
    if not shutil.which("apt-get"):
        return f"{binary} is not installed and there is no apt-get to install it"
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        _apt_updated = True
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", PEER_PACKAGES[binary]],
        capture_output=True,
        text=True,
        check=False,
        env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    if shutil.which(binary):
        return ""
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["unknown error"]
    return f"could not install {PEER_PACKAGES[binary]} with apt-get ({tail[0]})"


def tool_version(argv: Sequence[str]) -> str:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    except OSError:
        return "?"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"
