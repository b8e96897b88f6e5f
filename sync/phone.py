"""Synthetic iPhones: the sync room's one generator of phone content and of MobileSync backup folders.

Keeps: a deterministic phone per (seed, size, options) — its lockdown identity, the files it holds on day N, their
bytes, and the backup folder a host holds after backing it up on day N (optionally iOS-encrypted, reference §5).
Tests, the device emulator and the benchmarks all use this one generator.

Model. Day 0 is drawn from the seed; day N is day 0 plus N deterministic days of change (new photos, an edit, a
deletion or two, a few plists, every SQLite database touched in place). A file's bytes are a pure function of
(seed, domain, path, rev), rev being the day it last changed, so an unchanged file keeps its bytes and mtime.
SQLite databases are the exception that keeps chunking honest: rev N is rev N-1 with that day's rows changed in
place (same page size, no VACUUM), built once per phone into a private cache directory.

Memory: media bytes are blake3 XOF output keyed per (seed, file, rev), streamed in ≤ 1 MiB pieces; nothing holds a
whole file. The file list costs ~0.5 KiB per file (300 000 files ≈ 150 MB, only for the many-files benchmark).
"""

from __future__ import annotations

import argparse
import functools
import os
import plistlib
import random
import re
import shutil
import sqlite3
import struct
import sys
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from phonevault.sync.manifest import (
    FLAG_DIR,
    FLAG_FILE,
    FLAG_SYMLINK,
    S_IFDIR,
    S_IFLNK,
    S_IFREG,
    CatalogEntry,
    DeviceInfo,
    file_id,
    info_plist_bytes,
    write_manifest_db,
)

PIECE = 1 << 20
EPOCH = 1717236000  # 2024-06-01T10:00:00Z: the moment of day 0's backup
DAY = 86400
MANY_FILES = 300_000
_WRITERS = 4
#: Protection classes a backup keybag carries (class 4 wraps the ManifestKey).
KEYBAG_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)

_PROFILES = (  # ProductType, HardwareModel, HardwarePlatform, ChipID, ModelNumber
    ("iPhone15,2", "D73AP", "t8120", 0x8120, "MQ0G3"),
    ("iPhone14,5", "D17AP", "t8110", 0x8110, "MLPF3"),
    ("iPhone16,1", "D83AP", "t8130", 0x8130, "MTUW3"),
    ("iPhone12,1", "N104AP", "t8030", 0x8030, "MWLT2"),
)
_IOS = (("17.5.1", "21F90"), ("17.4.1", "21E236"), ("17.6.1", "21G93"), ("16.7.8", "20H343"))
_NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia", "Alan", "Frances")
_BUNDLES = (
    "net.whatsapp.WhatsApp",
    "com.spotify.client",
    "com.google.Maps",
    "com.burbn.instagram",
    "ph.telegra.Telegraph",
    "com.netflix.Netflix",
    "com.duolingo.DuolingoMobile",
    "com.getdropbox.Dropbox",
    "org.whispersystems.signal",
    "com.microsoft.Office.Outlook",
    "com.ubercab.UberClient",
    "com.strava.stravaride",
    "com.shazam.Shazam",
)
_HOME_PREFS = (
    "com.apple.springboard",
    "com.apple.mobilesafari",
    "com.apple.Preferences",
    "com.apple.mobilephone",
    "com.apple.MobileSMS",
    "com.apple.camera",
    "com.apple.weather",
    "com.apple.mobilecal",
    "com.apple.mobilenotes",
    "com.apple.Maps",
    "com.apple.Music",
    "com.apple.locationd",
)
_APP_DIRS = ("Library/Application Support", "Library/Caches", "Documents", "Library/SyncedPreferences")
_HOME_DIRS = ("Library/SpringBoard", "Library/Caches", "Library/CallHistoryTransactions", "Library/Accounts")
_WORDS = (
    "ok see you soon lol on my way running late dinner tonight? call me when you can thanks! "
    "sounds good where are you love it haha yes no maybe tomorrow morning photo meeting train coffee"
).split()
_SYMLINKS = (
    ("HomeDomain", "Library/Caches/Snapshots", "/private/var/mobile/Library/SplashBoard/Snapshots"),
    ("MediaDomain", "Media/Recordings/Recordings", "/private/var/mobile/Media/Recordings"),
)

_HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic\x00\x00\x00\x22meta\x00\x00\x00\x00"
_JPEG = b"\xff\xd8\xff\xe1\x00\x62Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08"
_MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  \x00\x00\x00\x08wide"


def _key(*parts: object) -> bytes:
    return blake3.blake3("\x1f".join(map(str, parts)).encode()).digest()


def _rng(*parts: object) -> random.Random:
    return random.Random(_key(*parts))


def parse_size(text: str) -> int:
    """'64MB', '6GB', '512KiB', '1000' → bytes (binary multiples: the benchmarks think in MiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2].upper() or " "))


@dataclass(frozen=True, slots=True)
class PhoneFile:
    """A file, directory or symlink on the phone: CatalogEntry's fields plus what the generator needs for bytes."""

    file_id: str
    domain: str
    relative_path: str
    flags: int
    size: int
    mode: int
    mtime: int
    target: str | None = None
    protection_class: int | None = None
    has_encryption_key: bool = False
    kind: str = ""  # heic jpg mov video thumb plist-bin plist-xml sms photos addressbook dir symlink
    rev: int = 0  # the day its bytes were last changed

    def catalog_entry(self) -> CatalogEntry:
        return CatalogEntry(
            self.file_id,
            self.domain,
            self.relative_path,
            self.flags,
            self.size,
            self.mode,
            self.mtime,
            self.target,
            self.protection_class,
            self.has_encryption_key,
        )


_DB_PATHS = {
    "sms": ("HomeDomain", "Library/SMS/sms.db"),
    "photos": ("CameraRollDomain", "Media/PhotoData/Photos.sqlite"),
    "addressbook": ("HomeDomain", "Library/AddressBook/AddressBook.sqlitedb"),
}


@dataclass(slots=True)
class _State:
    """The phone on one day. ``files`` holds files and symlinks; directories are derived."""

    files: dict[tuple[str, str], PhoneFile]
    next_img: int
    assets: dict[str, tuple[tuple[str, str], ...]]  # original's path → keys of it and its companions
    plists: list[tuple[str, str]]
    added: list[str] = field(default_factory=list)  # that day's camera-roll originals, for Photos.sqlite
    removed: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    contacts_changed: bool = False


class SyntheticPhone:
    """A deterministic iPhone of about ``size`` bytes (±10 % on day 0).

    ``many_files=True`` gives ≥ 300 000 small plists (an int: exactly that many) for the benchmarks.
    ``password`` makes its backups iOS-encrypted; ``kdf_iterations`` is the keybag's DPIC (real devices use
    10 000 000; ITER is DPIC/1000) — keep it small in tests.
    """

    def __init__(
        self,
        seed: int = 1,
        size: int = 64 * 2**20,
        *,
        password: str | None = None,
        many_files: bool | int = False,
        kdf_iterations: int = 1000,
    ) -> None:
        self.seed = seed
        self.size = size
        self.password = password
        self.kdf_iterations = kdf_iterations
        if many_files is True:
            self.plist_count = MANY_FILES
        elif many_files:
            self.plist_count = int(many_files)
        else:
            # ~1 plist per 32 KiB, as on real phones, up to 60 000 (the many-files benchmark asks for more itself).
            self.plist_count = min(max(64, size // (32 * 1024)), 60_000)
        r = _rng(seed, "identity")
        self.udid = _key(seed, "udid").hex()[:40]
        self._profile = _PROFILES[r.randrange(len(_PROFILES))]
        self._ios = _IOS[r.randrange(len(_IOS))]
        self._owner = _NAMES[r.randrange(len(_NAMES))]
        self._db_targets = {
            "sms": min(max(size // 50, 128 * 1024), 64 << 20),
            "photos": min(max(size // 64, 128 * 1024), 48 << 20),
            "addressbook": min(max(size // 256, 64 * 1024), 8 << 20),
        }
        self._states: dict[int, _State] = {}
        self._cache: Path | None = None
        self._crypto: tuple[bytes, dict[int, bytes]] | None = None
        self._sceneprints: int | None = None

    # ------------------------------------------------------------------------------------------- identity

    def lockdown_values(self) -> dict[str, Any]:
        """lockdownd's root dict (GetValue without Domain/Key), as a real iPhone answers it."""
        r = _rng(self.seed, "lockdown")
        product_type, hw_model, platform, chip_id, model_number = self._profile
        version, build = self._ios
        alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        imei14 = "35" + "".join(r.choice("0123456789") for _ in range(12))
        mac = lambda: ":".join(f"{r.randrange(256):02x}" for _ in range(6))  # noqa: E731
        return {
            "ActivationState": "Activated",
            "BasebandVersion": f"{r.randint(1, 5)}.{r.randint(0, 60):02d}.{r.randint(0, 9):02d}",
            "BluetoothAddress": mac(),
            "BoardId": r.randrange(2, 16, 2),
            "BuildVersion": build,
            "CPUArchitecture": "arm64e",
            "ChipID": chip_id,
            "DeviceClass": "iPhone",
            "DeviceColor": "1",
            "DeviceName": f"{self._owner}’s iPhone",
            "DieID": r.getrandbits(63),
            "EthernetAddress": mac(),
            "FirmwareVersion": f"iBoot-{r.randint(8400, 10200)}.{r.randint(0, 140)}.{r.randint(0, 9)}",
            "HardwareModel": hw_model,
            "HardwarePlatform": platform,
            "HostAttached": True,
            "IntegratedCircuitCardIdentity": "8901" + "".join(r.choice("0123456789") for _ in range(15)),
            "InternationalMobileEquipmentIdentity": imei14 + _luhn(imei14),
            "MobileEquipmentIdentifier": imei14,
            "ModelNumber": model_number,
            "PasswordProtected": True,
            "PhoneNumber": f"+1 ({r.randint(201, 989)}) 555-{r.randint(100, 199):04d}",
            "ProductName": "iPhone OS",
            "ProductType": product_type,
            "ProductVersion": version,
            "ProtocolVersion": "2",
            "RegionInfo": "LL/A",
            "SIMStatus": "kCTSIMSupportSIMStatusReady",
            "SerialNumber": "".join(r.choice(alnum) for _ in range(12)),
            "TelephonyCapability": True,
            "TimeZone": "America/Los_Angeles",
            "TimeZoneOffsetFromUTC": -25200.0,
            "UniqueChipID": r.getrandbits(52),
            "UniqueDeviceID": self.udid,
            "Uses24HourClock": False,
            "WiFiAddress": mac(),
        }

    def device_info(self) -> DeviceInfo:
        v = self.lockdown_values()
        return DeviceInfo(
            udid=v["UniqueDeviceID"],
            name=v["DeviceName"],
            product_type=v["ProductType"],
            ios_version=v["ProductVersion"],
            build=v["BuildVersion"],
            serial=v["SerialNumber"],
            imei=v["InternationalMobileEquipmentIdentity"],
            meid=v["MobileEquipmentIdentifier"],
            phone_number=v["PhoneNumber"],
            iccid=v["IntegratedCircuitCardIdentity"],
        )

    def backup_time(self, day: int) -> int:
        """Unix time of day ``day``'s backup; every file changed that day has an mtime before it."""
        return EPOCH + day * DAY

    # ------------------------------------------------------------------------------------------- content plan

    def files(self, day: int = 0) -> list[PhoneFile]:
        """Everything in the phone's backup on ``day``: files, directories and symlinks, sorted by (domain, path)."""
        state = self._state(day)
        out: list[PhoneFile] = []
        dirs: dict[tuple[str, str], int] = {}
        encrypted = self.password is not None
        for (domain, path), f in state.files.items():
            if f.kind in _DB_PATHS:
                f = replace(f, size=self._db_path(f.kind, f.rev).stat().st_size)
            if encrypted and f.flags == FLAG_FILE:
                f = replace(f, has_encryption_key=True)
            out.append(f)
            parts = path.split("/")
            for k in range(len(parts)):
                key = (domain, "/".join(parts[:k]))
                if dirs.get(key, -1) < f.mtime:
                    dirs[key] = f.mtime
        for (domain, path), mtime in dirs.items():
            out.append(
                PhoneFile(file_id(domain, path), domain, path, FLAG_DIR, 0, S_IFDIR | 0o755, mtime, None, 0, kind="dir")
            )
        out.sort(key=lambda f: (f.domain, f.relative_path))
        return out

    def _state(self, day: int) -> _State:
        if day < 0:
            raise ValueError("day must be ≥ 0")
        if day in self._states:
            return self._states[day]
        start = max((d for d in self._states if d <= day), default=None)
        state = self._states[start] if start is not None else self._day0()
        if start is None:
            start = 0
            self._states[0] = state
        for d in range(start + 1, day + 1):
            state = self._next_day(state, d)
            self._states[d] = state
        # Keep day 0 and the most recent few: enough for "write day N then N+1" without unbounded memory.
        for d in sorted(self._states)[1:-8]:
            del self._states[d]
        return state

    def _file(self, domain: str, path: str, kind: str, size: int, mtime: int, rev: int, pclass: int = 3) -> PhoneFile:
        return PhoneFile(
            file_id(domain, path), domain, path, FLAG_FILE, size, S_IFREG | 0o644, mtime, None, pclass, False, kind, rev
        )

    def _plist_file(self, domain: str, path: str, kind: str, rev: int, mtime: int | None, pclass: int) -> PhoneFile:
        k, shape = self._plist_shape(domain, path, rev)
        size = len(_plist_template(kind == "plist-xml", shape)[0])
        if mtime is None:  # day 0: some time in the 200 days before, from the same key (one hash per plist)
            mtime = EPOCH - 1 - int.from_bytes(k[4:8]) % (200 * DAY)
        return self._file(domain, path, kind, size, mtime, rev, pclass)

    def _day0(self) -> _State:
        files: dict[tuple[str, str], PhoneFile] = {}
        plists: list[tuple[str, str]] = []
        for i in range(self.plist_count):
            domain, path = _plist_path(i)
            kind = "plist-xml" if i % 10 >= 7 else "plist-bin"
            files[(domain, path)] = self._plist_file(domain, path, kind, 0, None, 4 if i % 3 == 0 else 3)
            plists.append((domain, path))
        for kind, (domain, path) in _DB_PATHS.items():
            files[(domain, path)] = self._file(domain, path, kind, -1, EPOCH - 3600, 0)
        for domain, path, target in _SYMLINKS:
            files[(domain, path)] = PhoneFile(
                file_id(domain, path),
                domain,
                path,
                FLAG_SYMLINK,
                0,
                S_IFLNK | 0o755,
                EPOCH - 90 * DAY,
                target,
                0,
                kind="symlink",
            )
        state = _State(files, 1, {}, plists)
        used = sum(f.size for f in files.values() if f.size > 0) + sum(self._db_targets.values())
        budget = self.size - used
        r = _rng(self.seed, "day0")
        if self.size >= 2**30:
            video_budget, vmin, vmax = budget * 35 // 100, 50 << 20, min(3 << 30, self.size * 2 // 5)
        else:
            video_budget, vmin, vmax = budget // 10, self.size // 100, self.size // 20
        while video_budget >= vmin and vmin > 0:
            vsize = min(r.randint(vmin, max(vmin, vmax)), video_budget)
            budget -= self._add_asset(state, r, 0, "video", vsize)
            video_budget -= vsize
        while budget > 64 * 1024:
            kind = "jpg" if r.random() < 0.15 else "heic"
            want = r.randint(1_500_000, 4_000_000)
            # The last photo of a small phone is a small one (a screenshot-sized JPG) so day 0 lands on `size`.
            if want + want // 40 > budget:
                kind, want = "jpg", max(budget * 39 // 40, 32 * 1024)
            live = kind == "heic" and r.random() < 0.3 and want * 11 // 10 + 3_000_000 < budget
            budget -= self._add_asset(state, r, 0, kind, want, live=live)
        return state

    def _add_asset(self, state: _State, r: random.Random, day: int, kind: str, size: int, live: bool = False) -> int:
        """Add a camera-roll original with its thumbnail (and live-photo MOV); returns the bytes added."""
        n = state.next_img
        state.next_img += 1
        folder = f"Media/DCIM/{100 + (n // 1000) % 900}APPLE"
        stem = f"IMG_{n % 10000:04d}"
        ext = {"heic": "HEIC", "jpg": "JPG", "video": "MOV"}[kind]
        if day == 0:
            mtime = EPOCH - 400 * DAY + (n * 3571) % (399 * DAY)
        else:
            mtime = self.backup_time(day) - r.randint(600, 20 * 3600)
        domain = "CameraRollDomain"
        original = f"{folder}/{stem}.{ext}"
        keys = [(domain, original)]
        state.files[keys[0]] = self._file(domain, original, kind, size, mtime, day)
        thumb_size = max(8 * 1024, min(size // 40, 120 * 1024))
        thumb = f"Media/PhotoData/Thumbnails/V2/DCIM/{folder.rsplit('/', 1)[1]}/{stem}.{ext}/5005.JPG"
        keys.append((domain, thumb))
        state.files[keys[1]] = self._file(domain, thumb, "thumb", thumb_size, mtime + 2, day)
        added = size + thumb_size
        if live:
            mov_size = r.randint(1_500_000, 3_000_000)
            mov = f"{folder}/{stem}.MOV"
            keys.append((domain, mov))
            state.files[keys[2]] = self._file(domain, mov, "mov", mov_size, mtime, day)
            added += mov_size
        state.assets[original] = tuple(keys)
        if day:
            state.added.append(original)
        return added

    def _next_day(self, prev: _State, day: int) -> _State:
        state = _State(dict(prev.files), prev.next_img, dict(prev.assets), prev.plists)
        r = _rng(self.seed, "day", day)
        older = list(state.assets)
        # About 1 % of the phone in new media a day, at least one photo.
        budget = max(self.size // 100, 1)
        while budget > 0:
            kind = "jpg" if r.random() < 0.15 else "heic"
            budget -= self._add_asset(state, r, day, kind, r.randint(1_500_000, 4_000_000), live=r.random() < 0.3)
        if r.random() < 0.3:
            vsize = r.randint(max(self.size // 500, 256 * 1024), max(self.size // 50, 512 * 1024))
            self._add_asset(state, r, day, "video", vsize)
        photos = [a for a in older if state.files[state.assets[a][0]].kind in ("heic", "jpg")]
        if photos:
            edited = photos[r.randrange(len(photos))]
            state.edited.append(edited)
            mtime = self.backup_time(day) - r.randint(600, 20 * 3600)
            for key in state.assets[edited][:2]:  # the original and its thumbnail get new bytes
                f = state.files[key]
                size = f.size if f.kind == "thumb" else int(f.size * r.uniform(0.97, 1.04))
                state.files[key] = replace(f, size=size, mtime=mtime, rev=day)
        for _ in range(r.randint(1, 2)):
            candidates = [a for a in older if a in state.assets and a not in state.edited]
            if len(candidates) <= 1:
                break
            gone = candidates[r.randrange(len(candidates))]
            for key in state.assets.pop(gone):
                del state.files[key]
            state.removed.append(gone)
        for _ in range(r.randint(3, 10)):
            key = state.plists[r.randrange(len(state.plists))]
            f = state.files[key]
            mtime = self.backup_time(day) - r.randint(60, 20 * 3600)
            state.files[key] = self._plist_file(f.domain, f.relative_path, f.kind, day, mtime, f.protection_class or 3)
        state.contacts_changed = r.random() < 0.5
        for kind, key in _DB_PATHS.items():
            if kind != "addressbook" or state.contacts_changed:
                state.files[key] = replace(state.files[key], mtime=self.backup_time(day) - 120, rev=day)
        return state

    # ------------------------------------------------------------------------------------------- bytes

    def open(self, file: PhoneFile, day: int | None = None) -> Iterator[bytes]:
        """The file's plaintext bytes in ≤ 1 MiB pieces (``day`` is accepted for symmetry; ``file.rev`` decides)."""
        if file.flags != FLAG_FILE:
            return iter(())
        if file.kind in _DB_PATHS:
            return _read_pieces(self._db_path(file.kind, file.rev))
        if file.kind.startswith("plist"):
            return iter((self._plist_bytes(file.domain, file.relative_path, file.kind, file.rev),))
        return self._media(file)

    content = open

    def _media(self, f: PhoneFile) -> Iterator[bytes]:
        header = {"heic": _HEIC, "jpg": _JPEG, "thumb": _JPEG}.get(f.kind, _MOV)
        xof = blake3.blake3(key=_key(self.seed, "bytes", f.domain, f.relative_path, f.rev))
        for off in range(0, f.size, PIECE):
            piece = xof.digest(length=min(PIECE, f.size - off), seek=off)
            if off == 0:
                piece = (header + piece[len(header) :])[: f.size]
            if off + PIECE >= f.size and f.kind in ("jpg", "thumb"):
                piece = piece[:-2] + b"\xff\xd9"  # JPEG end-of-image marker
            yield piece

    def _plist_shape(self, domain: str, path: str, rev: int) -> tuple[bytes, int]:
        k = _key(self.seed, "plist", domain, path, rev)
        return k, k[0] % self._plist_shapes

    @functools.cached_property
    def _plist_shapes(self) -> int:
        """How many of the (growing) plist shapes to draw from: all of them normally; with ``many_files`` only
        the small ones, so 300 000 plists stay under a quarter of the phone and photos still fill the rest."""
        budget = self.size / 4 / max(self.plist_count, 1)
        total = 0
        for k in range(len(_PLIST_STATE_LENGTHS)):
            total += 0.7 * len(_plist_template(False, k)[0]) + 0.3 * len(_plist_template(True, k)[0])
            if total / (k + 1) > budget:
                return max(k, 1)
        return len(_PLIST_STATE_LENGTHS)

    def _plist_bytes(self, domain: str, path: str, kind: str, rev: int) -> bytes:
        k, shape = self._plist_shape(domain, path, rev)
        template, ident_at, state_at, state_len = _plist_template(kind == "plist-xml", shape)
        ident = str(uuid.UUID(bytes=k[:16])).upper().encode()
        state = blake3.blake3(k).digest(state_len if kind != "plist-xml" else state_len // 2)
        if kind == "plist-xml":
            state = state.hex().encode()
        out = bytearray(template)
        out[ident_at : ident_at + 36] = ident
        out[state_at : state_at + state_len] = state
        return bytes(out)

    # ------------------------------------------------------------------------------------------- SQLite databases

    def _db_path(self, kind: str, rev: int) -> Path:
        """The database as it is after day ``rev``, built once: the newest cached earlier day plus days applied in place."""
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="phonevault-phone-"))
            weakref.finalize(self, shutil.rmtree, self._cache, True)
        path = self._cache / f"{kind}-{rev}.sqlite"
        if path.exists():
            return path
        base = max((d for d in range(rev) if (self._cache / f"{kind}-{d}.sqlite").exists()), default=None)
        tmp = path.with_suffix(".tmp")
        if base is None:
            tmp.unlink(missing_ok=True)
            conn = _connect(tmp)
            getattr(self, f"_build_{kind}")(conn)
            conn.close()
            base = 0
        else:
            shutil.copyfile(self._cache / f"{kind}-{base}.sqlite", tmp)
        self._state(rev)  # the day events below come from the state simulation
        for d in range(base + 1, rev + 1):
            state = self._state(d)
            if kind == "addressbook" and not state.contacts_changed:
                continue
            conn = _connect(tmp)
            getattr(self, f"_change_{kind}")(conn, d, state)
            conn.close()
        os.replace(tmp, path)
        return path

    def _build_sms(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, service TEXT NOT NULL);"
            "CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, text TEXT,"
            " handle_id INTEGER DEFAULT 0, service TEXT, date INTEGER, date_read INTEGER, is_from_me INTEGER DEFAULT 0,"
            " is_read INTEGER DEFAULT 0, attributedBody BLOB);"
            "CREATE INDEX message_idx_handle ON message(handle_id, date);"
            "CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER, message_date INTEGER DEFAULT 0,"
            " PRIMARY KEY (chat_id, message_id));"
        )
        r = _rng(self.seed, "sms", 0)
        handles = [
            (f"+1{r.randint(2012000000, 9899999999)}", "iMessage" if r.random() < 0.7 else "SMS") for _ in range(60)
        ]
        conn.executemany("INSERT INTO handle (id, service) VALUES (?, ?)", handles)
        count = self._db_targets["sms"] // 420
        self._insert_messages(conn, r, count, EPOCH - 400 * DAY, 400 * DAY)
        conn.commit()

    def _insert_messages(self, conn: sqlite3.Connection, r: random.Random, count: int, start: int, span: int) -> None:
        apple = 978307200  # sms.db dates are nanoseconds since 2001-01-01
        texts = [" ".join(r.choices(_WORDS, k=k)) for k in range(2, 32)] * 4
        r.shuffle(texts)
        # One XOF read per batch feeds guids and attributedBody blobs: per-row randbytes dominated build time.
        pool = blake3.blake3(r.randbytes(32)).digest(count * 316)
        rows = []
        pos = 0
        for i in range(count):
            n = 60 + pool[pos] + (pool[pos + 1] & 0x1F)
            guid = pool[pos + 2 : pos + 18].hex().upper()
            rows.append(
                (
                    f"{guid[:8]}-{guid[8:12]}-{guid[12:16]}-{guid[16:20]}-{guid[20:]}",
                    texts[(i * 7 + pool[pos + 18]) % len(texts)],
                    1 + pool[pos + 19] % 60,
                    (start + span * i // max(count, 1) - apple) * 10**9,
                    pool[pos + 20] & 1,
                    pool[pos + 21 : pos + 21 + n],
                )
            )
            pos += 21 + n
        conn.executemany(
            "INSERT INTO message (guid, text, handle_id, service, date, is_from_me, is_read, attributedBody)"
            " VALUES (?, ?, ?, 'iMessage', ?, ?, 1, ?)",
            rows,
        )
        conn.execute(
            "INSERT INTO chat_message_join SELECT handle_id, ROWID, date FROM message WHERE ROWID > ?",
            (conn.execute("SELECT coalesce(max(message_id), 0) FROM chat_message_join").fetchone()[0],),
        )

    def _change_sms(self, conn: sqlite3.Connection, day: int, state: _State) -> None:
        r = _rng(self.seed, "sms", day)
        self._insert_messages(conn, r, r.randint(10, 40), self.backup_time(day) - DAY, DAY - 300)
        conn.execute(
            "UPDATE message SET is_read = 1, date_read = ? WHERE is_read = 0",
            ((self.backup_time(day) - 978307200) * 10**9,),
        )
        conn.execute(
            "UPDATE message SET is_read = 0 WHERE ROWID IN (SELECT ROWID FROM message ORDER BY ROWID DESC LIMIT 3)"
        )
        conn.commit()

    def _build_photos(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE ZASSET (Z_PK INTEGER PRIMARY KEY, ZDIRECTORY VARCHAR, ZFILENAME VARCHAR, ZUUID VARCHAR,"
            " ZKIND INTEGER, ZWIDTH INTEGER, ZHEIGHT INTEGER, ZDATECREATED TIMESTAMP, ZMODIFICATIONDATE TIMESTAMP,"
            " ZTRASHEDSTATE INTEGER, ZHASADJUSTMENTS INTEGER);"
            "CREATE INDEX ZASSET_ZFILENAME ON ZASSET(ZFILENAME);"
            "CREATE TABLE ZADDITIONALASSETATTRIBUTES (Z_PK INTEGER PRIMARY KEY, ZASSET INTEGER, ZORIGINALFILENAME VARCHAR,"
            " ZORIGINALFILESIZE INTEGER, ZEXIFTIMESTAMPSTRING VARCHAR, ZREVERSELOCATIONDATA BLOB);"
            "CREATE TABLE ZSCENEPRINT (Z_PK INTEGER PRIMARY KEY, ZADDITIONALASSETATTRIBUTES INTEGER, ZDATA BLOB);"
            "CREATE INDEX ZSCENEPRINT_ZAAA ON ZSCENEPRINT(ZADDITIONALASSETATTRIBUTES);"
        )
        state = self._state(0)
        for original in state.assets:
            self._insert_asset(conn, original, state)
        conn.commit()

    def _insert_asset(self, conn: sqlite3.Connection, original: str, state: _State) -> None:
        f = state.files[state.assets[original][0]]
        r = _rng(self.seed, "asset", original)
        directory, name = original.rsplit("/", 1)
        apple = f.mtime - 978307200
        cur = conn.execute(
            "INSERT INTO ZASSET (ZDIRECTORY, ZFILENAME, ZUUID, ZKIND, ZWIDTH, ZHEIGHT, ZDATECREATED, ZMODIFICATIONDATE,"
            " ZTRASHEDSTATE, ZHASADJUSTMENTS) VALUES (?, ?, ?, ?, 4032, 3024, ?, ?, 0, 0)",
            (
                directory.removeprefix("Media/"),
                name,
                str(uuid.UUID(bytes=r.randbytes(16))).upper(),
                int(f.kind == "video"),
                apple,
                apple,
            ),
        )
        asset_pk = cur.lastrowid
        cur = conn.execute(
            "INSERT INTO ZADDITIONALASSETATTRIBUTES (ZASSET, ZORIGINALFILENAME, ZORIGINALFILESIZE, ZEXIFTIMESTAMPSTRING,"
            " ZREVERSELOCATIONDATA) VALUES (?, ?, ?, ?, ?)",
            (
                asset_pk,
                name,
                f.size,
                datetime.fromtimestamp(f.mtime, UTC).strftime("%Y:%m:%d %H:%M:%S"),
                r.randbytes(500),
            ),
        )
        n = self._sceneprint_count()
        conn.executemany(
            "INSERT INTO ZSCENEPRINT (ZADDITIONALASSETATTRIBUTES, ZDATA) VALUES (?, ?)",
            [(cur.lastrowid, r.randbytes(2048)) for _ in range(n)],
        )

    def _sceneprint_count(self) -> int:
        # Scene prints pad Photos.sqlite to a realistic size per asset; the per-asset count is fixed by day 0.
        if self._sceneprints is None:
            self._sceneprints = max(1, self._db_targets["photos"] // max(len(self._state(0).assets), 1) // 2200)
        return self._sceneprints

    def _change_photos(self, conn: sqlite3.Connection, day: int, state: _State) -> None:
        for original in state.added:
            self._insert_asset(conn, original, state)
        for original in state.edited:
            mtime = state.files[state.assets[original][0]].mtime - 978307200
            conn.execute(
                "UPDATE ZASSET SET ZMODIFICATIONDATE = ?, ZHASADJUSTMENTS = 1 WHERE ZFILENAME = ?",
                (mtime, original.rsplit("/", 1)[1]),
            )
        for original in state.removed:
            name = original.rsplit("/", 1)[1]
            conn.execute(
                "UPDATE ZASSET SET ZTRASHEDSTATE = 1, ZMODIFICATIONDATE = ? WHERE ZFILENAME = ?",
                (self.backup_time(day) - 978307200, name),
            )
        conn.commit()

    def _build_addressbook(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE ABPerson (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, First TEXT, Last TEXT, Organization TEXT,"
            " Note TEXT, ModificationDate INTEGER, ImageData BLOB);"
            "CREATE TABLE ABMultiValue (UID INTEGER PRIMARY KEY, record_id INTEGER, property INTEGER, label INTEGER, value TEXT);"
            "CREATE INDEX ABMultiValueRecord ON ABMultiValue(record_id);"
        )
        r = _rng(self.seed, "contacts", 0)
        for _ in range(max(self._db_targets["addressbook"] // 1500, 10)):
            self._insert_person(conn, r, EPOCH - r.randrange(900 * DAY))
        conn.commit()

    def _insert_person(self, conn: sqlite3.Connection, r: random.Random, when: int) -> None:
        cur = conn.execute(
            "INSERT INTO ABPerson (First, Last, Organization, Note, ModificationDate, ImageData) VALUES (?, ?, ?, ?, ?, ?)",
            (
                r.choice(_NAMES),
                r.choice(_NAMES) + "son",
                r.choice(("", "ACME", "Initech")),
                " ".join(r.choices(_WORDS, k=8)),
                when - 978307200,
                r.randbytes(r.randint(0, 1800)),
            ),
        )
        conn.executemany(
            "INSERT INTO ABMultiValue (record_id, property, label, value) VALUES (?, ?, ?, ?)",
            [
                (cur.lastrowid, 3, 1, f"+1{r.randint(2012000000, 9899999999)}"),
                (cur.lastrowid, 4, 2, f"p{r.randrange(10**6)}@example.com"),
            ],
        )

    def _change_addressbook(self, conn: sqlite3.Connection, day: int, state: _State) -> None:
        r = _rng(self.seed, "contacts", day)
        (count,) = conn.execute("SELECT max(ROWID) FROM ABPerson").fetchone()
        conn.execute(
            "UPDATE ABPerson SET Note = ?, ModificationDate = ? WHERE ROWID = ?",
            (" ".join(r.choices(_WORDS, k=10)), self.backup_time(day) - 978307200, r.randint(1, count)),
        )
        if r.random() < 0.5:
            self._insert_person(conn, r, self.backup_time(day) - 3600)
        conn.commit()

    # ------------------------------------------------------------------------------------------- encryption (§5)

    def _keys(self) -> tuple[bytes, dict[int, bytes]]:
        """(BackupKeyBag, class keys). Class keys are wrapped by the password key (or, unencrypted, a seed key)."""
        if self._crypto is None:
            salt, dpsl = _key(self.seed, "salt")[:20], _key(self.seed, "dpsl")[:20]
            dpic, iters = self.kdf_iterations, max(1, self.kdf_iterations // 1000)
            if self.password is not None:
                wrap_key = password_key(self.password, dpsl, dpic, salt, iters)
            else:
                wrap_key = _key(self.seed, "nopassword")
            class_keys = {c: _key(self.seed, "class", c) for c in KEYBAG_CLASSES}
            tlv = [
                (b"VERS", struct.pack(">I", 4)),
                (b"TYPE", struct.pack(">I", 1)),
                (b"UUID", _key(self.seed, "bag")[:16]),
                (b"HMCK", aes_key_wrap(wrap_key, _key(self.seed, "hmck"))),
                (b"WRAP", struct.pack(">I", 0)),
                (b"SALT", salt),
                (b"ITER", struct.pack(">I", iters)),
                (b"DPWT", struct.pack(">I", 1)),
                (b"DPIC", struct.pack(">I", dpic)),
                (b"DPSL", dpsl),
            ]
            for c in KEYBAG_CLASSES:
                tlv += [
                    (b"UUID", _key(self.seed, "classuuid", c)[:16]),
                    (b"CLAS", struct.pack(">I", c)),
                    (b"WRAP", struct.pack(">I", 2)),
                    (b"KTYP", struct.pack(">I", 0)),
                    (b"WPKY", aes_key_wrap(wrap_key, class_keys[c])),
                ]
            bag = b"".join(tag + struct.pack(">I", len(v)) + v for tag, v in tlv)
            self._crypto = (bag, class_keys)
        return self._crypto

    def _file_key(self, f: PhoneFile) -> bytes:
        return _key(self.seed, "filekey", f.file_id, f.rev)

    def encryption_key(self, f: PhoneFile) -> bytes:
        """MBFile EncryptionKey: u32le protection class + the file key AES-wrapped by that class key."""
        pclass = f.protection_class or 3
        return struct.pack("<I", pclass) + aes_key_wrap(self._keys()[1][pclass], self._file_key(f))

    def manifest_key(self) -> bytes:
        return struct.pack("<I", 4) + aes_key_wrap(self._keys()[1][4], _key(self.seed, "manifestkey"))

    # ------------------------------------------------------------------------------------------- backup folder

    def backup_stream(self, f: PhoneFile) -> Iterator[bytes]:
        """The bytes of ``<fileID[:2]>/<fileID>`` in the backup folder (encrypted when the phone has a password)."""
        if self.password is None:
            return self.open(f)
        return _encrypt(self._file_key(f), self.open(f))

    def backup_size(self, f: PhoneFile) -> int:
        return (f.size // 16 + 1) * 16 if self.password is not None else f.size

    def info_plist(self) -> bytes:
        return info_plist_bytes(
            self.lockdown_values(),
            guid=_key(self.seed, "guid")[:16],
            installed_applications=_BUNDLES,
            applications={
                b: {"iTunesMetadata": plistlib.dumps({"softwareVersionBundleId": b}), "ApplicationSINF": _key(b)}
                for b in _BUNDLES
            },
            itunes_files={"iTunesPrefs": _key(self.seed, "prefs") * 8, "IC-Info.sidv": _key(self.seed, "sidv")},
        )

    def manifest_plist(self, day: int) -> bytes:
        v = self.lockdown_values()
        d: dict[str, Any] = {
            "BackupKeyBag": self._keys()[0],
            "Version": "10.0",
            "Date": _dt(self.backup_time(day)),
            "SystemDomainsVersion": "24.0",
            "WasPasscodeSet": True,
            "IsEncrypted": self.password is not None,
            "Lockdown": {
                k: v[k]
                for k in (
                    "BuildVersion",
                    "DeviceName",
                    "ProductType",
                    "ProductVersion",
                    "SerialNumber",
                    "UniqueDeviceID",
                )
            }
            | {"com.apple.MobileDeviceCrashCopy": {}, "com.apple.TerminalFlashr": {}, "com.apple.mobile.data_sync": {}},
            "Applications": {
                b: {
                    "CFBundleIdentifier": b,
                    "CFBundleVersion": f"{_key(b)[0] % 20}.{_key(b)[1] % 10}",
                    "ContainerContentClass": "Data/Application",
                    "Path": f"/private/var/containers/Bundle/Application/{uuid.UUID(bytes=_key(self.seed, b)[:16])}".upper()
                    + "/App.app",
                }
                for b in _BUNDLES
            },
        }
        if self.password is not None:
            d["ManifestKey"] = self.manifest_key()
        return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)

    def status_plist(self, day: int) -> bytes:
        d = {
            "BackupState": "new",
            "Date": _dt(self.backup_time(day)),
            "IsFullBackup": day == 0,
            "SnapshotState": "finished",
            "UUID": str(uuid.UUID(bytes=_key(self.seed, "status", day)[:16])).upper(),
            "Version": "3.3",
        }
        return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)

    def write_manifest_db(self, path: Path, day: int, files: list[PhoneFile] | None = None) -> None:
        """Manifest.db of ``day`` at ``path`` (encrypted with the ManifestKey when the phone has a password)."""
        files = self.files(day) if files is None else files
        extra = {f.file_id: {"EncryptionKey": self.encryption_key(f)} for f in files if f.has_encryption_key}
        if self.password is None:
            write_manifest_db(path, (f.catalog_entry() for f in files), extra)
            return
        plain = Path(path).with_name(Path(path).name + ".plain")
        write_manifest_db(plain, (f.catalog_entry() for f in files), extra)
        with open(path, "wb") as out:
            for piece in _encrypt(_key(self.seed, "manifestkey"), _read_pieces(plain)):
                out.write(piece)
        plain.unlink()

    def write_backup(self, root: Path, day: int = 0) -> Path:
        """Make ``root/<udid>/`` the MobileSync backup folder a host holds after this phone's backup on ``day``.

        Incremental: a file already there with the expected size and mtime is kept (a file's mtime changes with its
        bytes), others are (re)written, files the phone no longer has are deleted, metadata is rewritten. The result
        is byte-identical to a fresh write. Returns the device folder.
        """
        dest = Path(root) / self.udid
        dest.mkdir(parents=True, exist_ok=True)
        files = self.files(day)
        manifest_plist = self.manifest_plist(day)
        # A folder of another seed/password has other keys: nothing in it can be trusted by stat alone.
        old = dest / "Manifest.plist"
        try:
            trust_stat = plistlib.loads(old.read_bytes()).get("BackupKeyBag") == self._keys()[0]
        except Exception:  # missing or damaged: rewrite everything
            trust_stat = False
        wanted = {f.file_id: f for f in files if f.flags == FLAG_FILE}
        for shard in range(256):
            (dest / f"{shard:02x}").mkdir(exist_ok=True)

        def scan(shard: int) -> list[tuple[str, os.stat_result]]:
            prefix = f"{shard:02x}"
            found = []
            with os.scandir(dest / prefix) as it:
                for entry in it:
                    if entry.name in wanted and entry.name[:2] == prefix and entry.is_file(follow_symlinks=False):
                        found.append((entry.name, entry.stat(follow_symlinks=False)))
                    elif entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)  # a file this day does not have (deleted photo, stray leftover)
            return found

        # stat() is a syscall per file: 300 000 of them take seconds, so shards are scanned by threads too.
        with ThreadPoolExecutor(_WRITERS) as pool:
            have = {name: st for found in pool.map(scan, range(256)) for name, st in found}
        todo = [
            f
            for fid, f in wanted.items()
            if not (
                trust_stat
                and (st := have.get(fid)) is not None
                and st.st_size == self.backup_size(f)
                and st.st_mtime_ns == f.mtime * 10**9
            )
        ]

        def write(share: list[PhoneFile]) -> None:
            for f in share:
                # Written in place, mtime last: an interrupted write leaves a wrong mtime, so the next run redoes it.
                target = dest / f.file_id[:2] / f.file_id
                with open(target, "wb") as out:
                    for piece in self.backup_stream(f):
                        out.write(piece)
                os.utime(target, ns=(f.mtime * 10**9, f.mtime * 10**9))

        # Creating files is syscall-bound (~100 µs each on a loaded VM); threads overlap it. Each file is
        # independent, so the order of writing does not affect the result.
        with ThreadPoolExecutor(_WRITERS) as pool:
            list(pool.map(write, [todo[i::_WRITERS] for i in range(_WRITERS)]))
        stamp = self.backup_time(day) * 10**9
        self.write_manifest_db(dest / "Manifest.db", day, files)
        for name, data in (
            ("Manifest.plist", manifest_plist),
            ("Status.plist", self.status_plist(day)),
            ("Info.plist", self.info_plist()),
        ):
            (dest / name).write_bytes(data)
        for name in ("Manifest.db", "Manifest.plist", "Status.plist", "Info.plist"):
            os.utime(dest / name, ns=(stamp, stamp))
        return dest


def password_key(password: str, dpsl: bytes, dpic: int, salt: bytes, iterations: int) -> bytes:
    """The key that unwraps keybag class keys (iOS ≥ 10.2): PBKDF2-SHA256 over DPSL/DPIC, then PBKDF2-SHA1 over SALT/ITER."""
    k1 = PBKDF2HMAC(hashes.SHA256(), 32, dpsl, dpic).derive(password.encode())
    return PBKDF2HMAC(hashes.SHA1(), 32, salt, iterations).derive(k1)


# Most preference plists are small; a few carry kilobytes of app state.
_PLIST_STATE_LENGTHS = (
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    160,
    200,
    256,
    320,
    400,
    512,
    640,
    800,
    1024,
    1400,
    2048,
    3000,
    4096,
)


@functools.cache
def _plist_template(xml: bool, shape: int) -> tuple[bytes, int, int, int]:
    """(template, identifier offset, state offset, state length) of a plist shape.

    Generating 300 000 plists with plistlib would take a minute; instead each shape is serialised once with
    fixed-width placeholders and files splice their own identifier and state bytes in (same size, other bytes).
    """
    r = random.Random(shape)
    state_len = _PLIST_STATE_LENGTHS[shape]
    ident = "PVIDENT" + "Q" * 29
    state = b"PVSTATE!" + b"Q" * (state_len - 8)
    d: dict[str, Any] = {
        "Identifier": ident,
        "LastLaunchDate": _dt(EPOCH - r.randrange(400 * DAY)),
        "LaunchCount": r.randrange(10_000),
        "Enabled": r.random() < 0.5,
        "RecentItems": [" ".join(r.choices(_WORDS, k=r.randint(1, 6))) for _ in range(r.randint(0, shape // 2))],
        "State": state.decode() if xml else state,
    }
    data = plistlib.dumps(d, fmt=plistlib.FMT_XML if xml else plistlib.FMT_BINARY, sort_keys=True)
    return data, data.index(ident.encode()), data.index(state), state_len


def _plist_path(i: int) -> tuple[str, str]:
    # One in five plists is the system's (HomeDomain), the rest spread over apps; ~100 per directory, like real phones.
    if i % 5 == 0:
        pref = _HOME_PREFS[(i // 5) % len(_HOME_PREFS)]
        j = i // (5 * len(_HOME_PREFS))
        if j == 0:
            return "HomeDomain", f"Library/Preferences/{pref}.plist"
        return "HomeDomain", f"{_HOME_DIRS[j % len(_HOME_DIRS)]}/{pref}/{j // 100:03d}/{j:06d}.plist"
    bundle = _BUNDLES[i % len(_BUNDLES)]
    j = i // len(_BUNDLES)
    if j == 0:
        return f"AppDomain-{bundle}", f"Library/Preferences/{bundle}.plist"
    return f"AppDomain-{bundle}", f"{_APP_DIRS[j % len(_APP_DIRS)]}/{j // 100:03d}/item-{j:06d}.plist"


def _luhn(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return str((10 - total % 10) % 10)


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)  # plistlib (3.11) writes naive datetimes as UTC


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = DELETE")
    return conn


def _read_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while piece := fh.read(PIECE):
            yield piece


def _encrypt(key: bytes, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """AES-256-CBC, zero IV, PKCS#7 padding: how iOS encrypts backup files and Manifest.db."""
    enc = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * 16)).encryptor()
    pad = padding.PKCS7(128).padder()
    for piece in pieces:
        yield enc.update(pad.update(piece))
    yield enc.update(pad.finalize()) + enc.finalize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m phonevault.sync.phone", description="Write a synthetic iPhone's backup folder."
    )
    p.add_argument("out", type=Path, help="backup root; the folder is OUT/<udid>")
    p.add_argument("--size", type=parse_size, default=64 * 2**20, help="e.g. 64MB, 6GB")
    p.add_argument("--day", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--password", default=None, help="make an iOS-encrypted backup")
    p.add_argument("--many-files", type=int, default=0, metavar="N", help="N small plists instead of the default")
    args = p.parse_args(argv)
    phone = SyntheticPhone(args.seed, args.size, password=args.password, many_files=args.many_files or False)
    print(phone.write_backup(args.out, args.day))
    return 0


if __name__ == "__main__":
    sys.exit(main())
