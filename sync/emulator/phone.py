"""Synthetic iPhones: the project's one generator of phone content and of MobileSync backup folders.

A `SyntheticPhone` is deterministic per (seed, size, options): its lockdown identity (`identity`), the files it
holds on day N (`days`), their bytes (`content`, `databases`), and the backup folder a host holds after backing
it up on day N (`folder`), optionally iOS-encrypted (`phonevault.sync.ioscrypto`). The emulator serves it; tests, the demo and
the benchmarks use it directly. Same seed and options → same folder bytes, whatever the machine.

Memory: file bytes stream in ≤ 1 MiB pieces; the file list costs ~0.5 KiB per file (see `days`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from phonevault.sync.ioscrypto import KEYBAG_CLASSES, backup_keybag, encrypt, encrypted_size, password_key, wrapped_key
from phonevault.sync.manifest import FLAG_FILE
from phonevault.sync.plists import DeviceInfo

from . import folder
from .content import FileBytes, read_pieces
from .databases import Databases, database_targets
from .days import DB_PATHS, MANY_FILES, DayModel, PhoneFile, with_directories
from .identity import Identity
from .seeds import backup_time, derive

__all__ = ["MANY_FILES", "PhoneFile", "SyntheticPhone"]


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
        self._identity = Identity.of(seed)
        self.udid = self._identity.udid
        self._bytes = FileBytes(seed, size, self.plist_count, self._identity.model_name)
        self._days = DayModel(seed, size, self.plist_count, sum(database_targets(size).values()), self._bytes)
        self._databases = Databases(seed, size, self._days)

    # ------------------------------------------------------------------------------------------- identity

    def lockdown_values(self) -> dict[str, Any]:
        """lockdownd's root dict (GetValue without Domain/Key), as a real iPhone answers it."""
        return self._identity.lockdown_values()

    def device_info(self) -> DeviceInfo:
        return self._identity.device_info()

    def backup_time(self, day: int) -> int:
        """Unix time of day ``day``'s backup; every file changed that day has an mtime before it."""
        return backup_time(day)

    # ------------------------------------------------------------------------------------------- content

    def files(self, day: int = 0) -> list[PhoneFile]:
        """Everything in the phone's backup on ``day``: files, directories and symlinks, sorted by (domain, path)."""
        encrypted = self.password is not None
        out = []
        for f in self._days.state(day).files.values():
            if f.kind in DB_PATHS:
                size = self._databases.path(f.kind, f.rev).stat().st_size
                f = replace(f, entry=replace(f.entry, size=size))
            if encrypted and f.entry.flags == FLAG_FILE:
                f = replace(f, entry=replace(f.entry, has_encryption_key=True))
            out.append(f)
        return with_directories(out)

    def open(self, file: PhoneFile, day: int | None = None) -> Iterator[bytes]:
        """The file's plaintext bytes in ≤ 1 MiB pieces (``day`` is accepted for symmetry; ``file.rev`` decides)."""
        e = file.entry
        if e.flags != FLAG_FILE:
            return iter(())
        if file.kind in DB_PATHS:
            return read_pieces(self._databases.path(file.kind, file.rev))
        if file.kind.startswith("plist"):
            return iter((self._bytes.plist(e.domain, e.relative_path, file.kind, file.rev),))
        return self._bytes.media(e.domain, e.relative_path, file.kind, e.size, file.rev, file.taken, e.mtime)

    # ------------------------------------------------------------------------------------------- encryption

    @functools.cached_property
    def _keys(self) -> tuple[bytes, dict[int, bytes]]:
        """(BackupKeyBag, class keys). Class keys are wrapped by the password key (or, unencrypted, a seed key)."""
        salt, dpsl = derive(self.seed, "salt")[:20], derive(self.seed, "dpsl")[:20]
        dpic, iterations = self.kdf_iterations, max(1, self.kdf_iterations // 1000)
        if self.password is not None:
            wrap_key = password_key(self.password, dpsl, dpic, salt, iterations)
        else:
            wrap_key = derive(self.seed, "nopassword")
        class_keys = {c: derive(self.seed, "class", c) for c in KEYBAG_CLASSES}
        bag = backup_keybag(
            wrap_key,
            bag_uuid=derive(self.seed, "bag")[:16],
            hmck=derive(self.seed, "hmck"),
            salt=salt,
            iterations=iterations,
            dpsl=dpsl,
            dpic=dpic,
            class_uuids={c: derive(self.seed, "classuuid", c)[:16] for c in KEYBAG_CLASSES},
            class_keys=class_keys,
        )
        return bag, class_keys

    def keybag(self) -> bytes:
        """Manifest.plist's BackupKeyBag (present, as on real phones, even when backups are not encrypted)."""
        return self._keys[0]

    def _file_key(self, f: PhoneFile) -> bytes:
        return derive(self.seed, "filekey", f.entry.file_id, f.rev)

    def encryption_key(self, f: PhoneFile) -> bytes:
        """MBFile EncryptionKey: u32le protection class + the file key AES-wrapped by that class key."""
        pclass = f.entry.protection_class or 3
        return wrapped_key(pclass, self._keys[1][pclass], self._file_key(f))

    def manifest_db_key(self) -> bytes:
        """The key Manifest.db is encrypted with (when the phone has a password)."""
        return derive(self.seed, "manifestkey")

    def manifest_key(self) -> bytes:
        """Manifest.plist's ManifestKey: `manifest_db_key` wrapped by the class-4 key."""
        return wrapped_key(4, self._keys[1][4], self.manifest_db_key())

    # ------------------------------------------------------------------------------------------- backup folder

    def backup_stream(self, f: PhoneFile) -> Iterator[bytes]:
        """The bytes of ``<fileID[:2]>/<fileID>`` in the backup folder (encrypted when the phone has a password)."""
        if self.password is None:
            return self.open(f)
        return encrypt(self._file_key(f), self.open(f))

    def backup_size(self, f: PhoneFile) -> int:
        return encrypted_size(f.entry.size) if self.password is not None else f.entry.size

    def write_backup(self, root: Path, day: int = 0) -> Path:
        """Make ``root/<udid>/`` the MobileSync backup folder a host holds after this phone's backup on ``day``.

        Incremental: a file already there with the expected size and mtime is kept (a file's mtime changes with its
        bytes), others are (re)written, files the phone no longer has are deleted, metadata is rewritten. The result
        is byte-identical to a fresh write. Returns the device folder.
        """
        return folder.write_backup(self, root, day)
