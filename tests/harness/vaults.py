"""Vaults on disk, the real `phonevault` command run against them, and digests of backup folders.

A `Vault` is a folder holding `vault/` (the repository) and `cache/` (its PHONEVAULT_CACHE_DIR), so copying one
folder copies a user's whole state, warm cache included. `pv` runs the installed console script in a private
environment (no PHONEVAULT_* from the caller, HOME inside the trial) and records every command in the trial;
any output containing "Traceback" is a problem of that trial, whatever the exit code.

Digests: a folder digest maps each file's path under the folder to (sha256, size, mode, mtime ns); "bit-exact"
below means equal digests, which is what `export` promises for a snapshot ("bit-for-bit as imported").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .records import Command, Trial

PASSWORD = "harness: correct horse battery staple"
SPARE_PASSWORD = "harness: the spare key"
NEW_PASSWORD = "harness: the new password"
PV = str(Path(sys.executable).with_name("phonevault"))
COMMAND_TIMEOUT_S = 300.0

FileDigest = tuple[str, int, int, int]  # sha256, size, mode, mtime ns
Digest = dict[str, FileDigest]


@dataclass(frozen=True, slots=True)
class Vault:
    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "vault"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def env(self, password: str = PASSWORD, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PHONEVAULT", "USBMUXD"))}
        env.update(
            PHONEVAULT_PASSWORD=password,
            PHONEVAULT_REPO=str(self.repo),
            PHONEVAULT_CACHE_DIR=str(self.cache),
            HOME=str(self.root / "home"),
            TMPDIR=str(self.tmp),
            COLUMNS="250",
        )
        env.update(extra)
        return env

    @property
    def tmp(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clone(self, root: Path, *, cache: bool = True) -> Vault:
        """A copy of this vault (and, unless `cache=False`, its warm cache) at `root`."""
        copy = Vault(root)
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.repo, copy.repo, symlinks=True)
        if cache and self.cache.exists():
            shutil.copytree(self.cache, copy.cache, symlinks=True)
        return copy


@dataclass(frozen=True, slots=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        """stderr without progress lines and the notes that say what is starting: what a user reads as messages
        (an expected failure must be exactly one of them)."""
        return [ln for ln in self.stderr.splitlines() if ln.strip() and not is_progress(ln) and not is_opening(ln)]


def is_progress(line: str) -> bool:
    head, sep, rest = line.partition(": ")
    return bool(sep) and " % (" in rest and rest.split(" ", 1)[0].isdigit()


OPENINGS = ("backing up ", "no device connected: using the built-in emulator")


def is_opening(line: str) -> bool:
    return line.startswith(OPENINGS)


def record(trial: Trial, args: tuple[str, ...], code: int, stdout: str, stderr: str, seconds: float) -> None:
    tail = "\n".join([ln for ln in stderr.splitlines() if ln.strip() and not is_progress(ln)][-4:])
    trial.commands.append(Command(args, code, round(seconds, 2), tail))
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        if "Traceback" in text:
            at = text.index("Traceback")
            trial.problem(f"`phonevault {' '.join(args)}` printed a traceback on {name}: {text[at : at + 600]}")


def pv(trial: Trial, vault: Vault, *args: str, password: str = PASSWORD, **extra_env: str) -> Run:
    start = time.monotonic()
    try:
        p = subprocess.run(
            [PV, *args],
            env=vault.env(password, **extra_env),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        code, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = -1, _text(e.stdout), _text(e.stderr)
        trial.problem(f"`phonevault {' '.join(args)}` did not finish in {COMMAND_TIMEOUT_S:.0f} s")
    record(trial, args, code, out, err, time.monotonic() - start)
    return Run(tuple(args), code, out, err)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def folder_digest(folder: Path) -> Digest:
    out: Digest = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            st = path.stat()
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[path.relative_to(folder).as_posix()] = (h.hexdigest(), st.st_size, st.st_mode, st.st_mtime_ns)
    return out


def digest_bytes(digest: Digest) -> int:
    return sum(d[1] for d in digest.values())


def differences(got: Digest, want: Digest, *, content_only: bool = False, limit: int = 3) -> list[str]:
    """Paths whose presence, bytes (or, unless content_only, mode or mtime) differ; at most `limit` named."""
    diff = []
    for path in sorted(got.keys() | want.keys()):
        a, b = got.get(path), want.get(path)
        if a is None or b is None:
            diff.append(f"{path} {'missing' if a is None else 'extra'}")
        elif (a[:2] != b[:2]) if content_only else (a != b):
            diff.append(f"{path} differs")
    return diff[:limit] + ([f"… {len(diff) - limit} more"] if len(diff) > limit else [])
