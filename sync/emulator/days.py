"""The synthetic phone's day model: which files and symlinks it holds on day N, their sizes, mtimes and revisions.

Model. Day 0 is drawn from the seed: preference plists (about one per 32 KiB of phone, or an exact count for the
many-files benchmark), three SQLite databases, two symlinks, then videos and camera-roll photos (with thumbnails
and live-photo MOVs) until the phone holds about ``size`` bytes. Day N is day N-1 plus N's change: about 1 % of the
phone in new photos (sometimes a video), one older photo edited, one or two deleted, 3-10 plists rewritten, every
database touched (the address book only on days contacts change).

Invariants: a pure function of (seed, size, plist count, database budget); a file's entry keeps its mtime and
``rev`` (the day its bytes last changed) until a day changes it, and its bytes are a function of ``rev``, so an
unchanged file stays byte-identical. Databases carry size -1 here: their size is known once `databases` built them.
A camera-roll file's ``taken`` is its first mtime (when the photo was taken); an edit changes its mtime and bytes,
never ``taken``, so the picture's EXIF DateTimeOriginal stays the day it was shot.

Memory: ~0.5 KiB per file (300 000 files ≈ 150 MB, only for the many-files benchmark); day 0 and the eight most
recent days are kept, enough to write day N then N+1 without recomputing from day 0.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from phonevault.sync.manifest import FLAG_DIR, FLAG_FILE, FLAG_SYMLINK, S_IFDIR, S_IFLNK, S_IFREG, CatalogEntry, file_id

from .content import FileBytes, plist_template
from .seeds import BUNDLES, DAY, EPOCH, backup_time, rng

MANY_FILES = 300_000
_KEPT_DAYS = 8

#: kind → (domain, path) of the SQLite databases the phone carries.
DB_PATHS = {
    "sms": ("HomeDomain", "Library/SMS/sms.db"),
    "photos": ("CameraRollDomain", "Media/PhotoData/Photos.sqlite"),
    "addressbook": ("HomeDomain", "Library/AddressBook/AddressBook.sqlitedb"),
}

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
_SYMLINKS = (
    ("HomeDomain", "Library/Caches/Snapshots", "/private/var/mobile/Library/SplashBoard/Snapshots"),
    ("MediaDomain", "Media/Recordings/Recordings", "/private/var/mobile/Media/Recordings"),
)


@dataclass(frozen=True, slots=True)
class PhoneFile:
    """A file, directory or symlink on the phone: its Manifest.db entry plus what the generator needs for bytes."""

    entry: CatalogEntry
    kind: str = ""  # heic jpg mov video thumb plist-bin plist-xml sms photos addressbook dir symlink
    rev: int = 0  # the day its bytes were last changed
    taken: int = 0  # camera-roll files: when the photo was taken (Unix time; its EXIF DateTimeOriginal), kept on edit


@dataclass(slots=True)
class DayState:
    """The phone on one day. ``files`` holds files and symlinks by (domain, path); directories are derived."""

    files: dict[tuple[str, str], PhoneFile]
    next_img: int
    assets: dict[str, tuple[tuple[str, str], ...]]  # original's path → keys of it and its companions
    plists: list[tuple[str, str]]
    added: list[str] = field(default_factory=list)  # that day's camera-roll originals, for Photos.sqlite
    removed: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    contacts_changed: bool = False


def regular_file(
    domain: str, path: str, kind: str, size: int, mtime: int, rev: int, pclass: int = 3, taken: int = 0
) -> PhoneFile:
    entry = CatalogEntry(file_id(domain, path), domain, path, FLAG_FILE, size, S_IFREG | 0o644, mtime, None, pclass)
    return PhoneFile(entry, kind, rev, taken)


def with_directories(files: Iterable[PhoneFile]) -> list[PhoneFile]:
    """``files`` plus every directory above them (mtime: their newest file's), sorted by (domain, path)."""
    out: list[PhoneFile] = []
    dirs: dict[tuple[str, str], int] = {}
    for f in files:
        out.append(f)
        domain, mtime = f.entry.domain, f.entry.mtime
        parts = f.entry.relative_path.split("/")
        for k in range(len(parts)):
            key = (domain, "/".join(parts[:k]))
            if dirs.get(key, -1) < mtime:
                dirs[key] = mtime
    for (domain, path), mtime in dirs.items():
        entry = CatalogEntry(file_id(domain, path), domain, path, FLAG_DIR, 0, S_IFDIR | 0o755, mtime, None, 0)
        out.append(PhoneFile(entry, "dir"))
    out.sort(key=lambda f: (f.entry.domain, f.entry.relative_path))
    return out


class DayModel:
    """The phone's days. ``database_bytes`` is what the databases will take on day 0 (media fill the rest)."""

    def __init__(self, seed: int, size: int, plist_count: int, database_bytes: int, file_bytes: FileBytes) -> None:
        self.seed = seed
        self.size = size
        self.plist_count = plist_count
        self._database_bytes = database_bytes
        self._bytes = file_bytes
        self._states: dict[int, DayState] = {}

    def state(self, day: int) -> DayState:
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
        for d in sorted(self._states)[1:-_KEPT_DAYS]:
            del self._states[d]
        return state

    def _plist_file(self, domain: str, path: str, kind: str, rev: int, mtime: int | None, pclass: int) -> PhoneFile:
        k, shape = self._bytes.plist_key(domain, path, rev)
        size = len(plist_template(kind == "plist-xml", shape)[0])
        if mtime is None:  # day 0: some time in the 200 days before, from the same key (one hash per plist)
            mtime = EPOCH - 1 - int.from_bytes(k[4:8]) % (200 * DAY)
        return regular_file(domain, path, kind, size, mtime, rev, pclass)

    def _day0(self) -> DayState:
        files: dict[tuple[str, str], PhoneFile] = {}
        plists: list[tuple[str, str]] = []
        for i in range(self.plist_count):
            domain, path = _plist_path(i)
            kind = "plist-xml" if i % 10 >= 7 else "plist-bin"
            files[(domain, path)] = self._plist_file(domain, path, kind, 0, None, 4 if i % 3 == 0 else 3)
            plists.append((domain, path))
        for kind, (domain, path) in DB_PATHS.items():
            files[(domain, path)] = regular_file(domain, path, kind, -1, EPOCH - 3600, 0)
        for domain, path, target in _SYMLINKS:
            entry = CatalogEntry(
                file_id(domain, path), domain, path, FLAG_SYMLINK, 0, S_IFLNK | 0o755, EPOCH - 90 * DAY, target, 0
            )
            files[(domain, path)] = PhoneFile(entry, "symlink")
        state = DayState(files, 1, {}, plists)
        used = sum(f.entry.size for f in files.values() if f.entry.size > 0) + self._database_bytes
        budget = self.size - used
        r = rng(self.seed, "day0")
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

    def _add_asset(self, state: DayState, r: random.Random, day: int, kind: str, size: int, live: bool = False) -> int:
        """Add a camera-roll original with its thumbnail (and live-photo MOV); returns the bytes added."""
        n = state.next_img
        state.next_img += 1
        folder = f"Media/DCIM/{100 + (n // 1000) % 900}APPLE"
        stem = f"IMG_{n % 10000:04d}"
        ext = {"heic": "HEIC", "jpg": "JPG", "video": "MOV"}[kind]
        if day == 0:
            mtime = EPOCH - 400 * DAY + (n * 3571) % (399 * DAY)
        else:
            mtime = backup_time(day) - r.randint(600, 20 * 3600)
        domain = "CameraRollDomain"
        original = f"{folder}/{stem}.{ext}"
        keys = [(domain, original)]
        state.files[keys[0]] = regular_file(domain, original, kind, size, mtime, day, taken=mtime)
        thumb_size = max(8 * 1024, min(size // 40, 120 * 1024))
        thumb = f"Media/PhotoData/Thumbnails/V2/DCIM/{folder.rsplit('/', 1)[1]}/{stem}.{ext}/5005.JPG"
        keys.append((domain, thumb))
        state.files[keys[1]] = regular_file(domain, thumb, "thumb", thumb_size, mtime + 2, day, taken=mtime)
        added = size + thumb_size
        if live:
            mov_size = r.randint(1_500_000, 3_000_000)
            mov = f"{folder}/{stem}.MOV"
            keys.append((domain, mov))
            state.files[keys[2]] = regular_file(domain, mov, "mov", mov_size, mtime, day, taken=mtime)
            added += mov_size
        state.assets[original] = tuple(keys)
        if day:
            state.added.append(original)
        return added

    def _next_day(self, prev: DayState, day: int) -> DayState:
        state = DayState(dict(prev.files), prev.next_img, dict(prev.assets), prev.plists)
        r = rng(self.seed, "day", day)
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
            mtime = backup_time(day) - r.randint(600, 20 * 3600)
            for key in state.assets[edited][:2]:  # the original and its thumbnail get new bytes, the same capture date
                f = state.files[key]
                size = f.entry.size if f.kind == "thumb" else int(f.entry.size * r.uniform(0.97, 1.04))
                state.files[key] = replace(f, entry=replace(f.entry, size=size, mtime=mtime), rev=day)
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
            e = state.files[key].entry
            mtime = backup_time(day) - r.randint(60, 20 * 3600)
            kind = state.files[key].kind
            state.files[key] = self._plist_file(e.domain, e.relative_path, kind, day, mtime, e.protection_class or 3)
        state.contacts_changed = r.random() < 0.5
        for kind, key in DB_PATHS.items():
            if kind != "addressbook" or state.contacts_changed:
                f = state.files[key]
                state.files[key] = PhoneFile(replace(f.entry, mtime=backup_time(day) - 120), f.kind, day)
        return state


def _plist_path(i: int) -> tuple[str, str]:
    # One in five plists is the system's (HomeDomain), the rest spread over apps; ~100 per directory, like real phones.
    if i % 5 == 0:
        pref = _HOME_PREFS[(i // 5) % len(_HOME_PREFS)]
        j = i // (5 * len(_HOME_PREFS))
        if j == 0:
            return "HomeDomain", f"Library/Preferences/{pref}.plist"
        return "HomeDomain", f"{_HOME_DIRS[j % len(_HOME_DIRS)]}/{pref}/{j // 100:03d}/{j:06d}.plist"
    bundle = BUNDLES[i % len(BUNDLES)]
    j = i // len(BUNDLES)
    if j == 0:
        return f"AppDomain-{bundle}", f"Library/Preferences/{bundle}.plist"
    return f"AppDomain-{bundle}", f"{_APP_DIRS[j % len(_APP_DIRS)]}/{j // 100:03d}/item-{j:06d}.plist"
