"""The emulated phone's backup encryption: whether it encrypts, its backup keybag, and the keys a backup uses.

Room: the phone's backup keystore. What the phone holds (`Content.folder`) is always plain; a backup of an
encrypted phone encrypts on the way out, as a phone encrypts its own files for the host: each file with its own key
(AES-256-CBC, wrapped by its protection class's key in its MBFile `EncryptionKey`), Manifest.db with the key that
Manifest.plist's `ManifestKey` wraps, Manifest.plist carrying the phone's `BackupKeyBag` and `IsEncrypted`. All of
it through `phonevault.sync.ioscrypto`, the crypto the host reads it with.

State, `DATA/backup-keys.plist` (binary plist, replaced atomically), the phone's memory across connections:
  Generation  int   bumps with every accepted ChangePassword: a new keybag (new salt, new class keys)
  Epoch       int   bumps with every full encrypted backup that succeeds: fresh file keys, a fresh ManifestKey
  Keybag      data  present exactly when the phone encrypts: the class keys wrapped by the password key
  Salt, DPSL, ITER, DPIC  the keybag's KDF parameters, to check a candidate password
  SentDigest  data  BLAKE3 of the encrypted Manifest.db of the last encrypted backup that ended with ErrorCode 0
and `DATA/backup-keys.db`, the plain catalog that backup described. The password itself is never stored: a
candidate is checked by wrapping the class keys again with the key it derives (AES key wrap is deterministic).

Key stability (what makes incrementals decryptable): a file key is drawn from (Generation, Epoch, fileID, the
file's MBFile row), so an unchanged file keeps its key from one backup to the next, and a changed one gets a new
one. An incremental continues the host's backup only when the host holds the phone's current keybag and exactly
the Manifest.db the phone last sent (SentDigest); otherwise the backup is full, and a full backup draws every key
afresh (a new Epoch): after a password change every file is re-encrypted and every key re-wrapped, as on a phone.
Epoch and SentDigest move only after the backup ended with ErrorCode 0, so a failed backup leaves the phone
continuing the host's last good one.

Memory: the encrypted Manifest.db is built from the plain one with every row's MBFile in memory (~0.5 KiB a row);
file bodies stream through `ioscrypto.encrypt`, one piece at a time.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import blake3

from phonevault.sync.errors import ManifestInvalid
from phonevault.sync.ioscrypto import (
    KEYBAG_CLASSES,
    KeybagError,
    PaddingError,
    PasswordMismatch,
    UnwrapError,
    backup_keybag,
    decrypt,
    decrypt_bytes,
    encrypt,
    encrypted_size,
    parse_keybag,
    password_key,
    unlock_class_keys,
    unwrap_key,
    wrapped_key,
)
from phonevault.sync.manifest import FLAG_FILE, read_manifest_rows, write_manifest_db

from .content import read_pieces
from .devicelink import Stream
from .seeds import derive

STATE = "backup-keys.plist"
SENT_CATALOG = "backup-keys.db"
DEFAULT_KDF_ITERATIONS = 1000  # DPIC; real phones use 10 000 000 (ITER = DPIC / 1000), too slow for a test rig
DEFAULT_CLASS = 3  # a file without a ProtectionClass is wrapped with class 3, as the synthetic phone does
MANIFEST_CLASS = 4  # ManifestKey is wrapped with class 4 on every backup seen
ERROR_BAD_REQUEST = 1
ERROR_BAD_BACKUP = 205  # "Error reading backup properties": a backup the phone cannot read
ERROR_INVALID_PASSWORD = 207  # MBErrorDomain/207, for ChangePassword and for restoring an encrypted backup
INVALID_PASSWORD = "Invalid password (MBErrorDomain/207)"
# What phones answer a restore (or Unback) of an encrypted backup with a wrong password.
RESTORE_INVALID_PASSWORD = (
    "Invalid password when restoring encrypted backup (MBErrorDomain/207). Underlying error: MKBKeyBagUnlock "
    "error (-3) (MBErrorDomain/207)."
)


@dataclass(frozen=True, slots=True)
class KeyState:
    generation: int = 0
    epoch: int = 0
    keybag: bytes | None = None
    salt: bytes = b""
    dpsl: bytes = b""
    iterations: int = 1
    dpic: int = 1
    sent_digest: bytes | None = None

    @property
    def encrypts(self) -> bool:
        return self.keybag is not None


@dataclass(frozen=True, slots=True)
class EncryptedBackup:
    """What one backup of an encrypted phone sends: Manifest.plist and Manifest.db (in scratch), a body per file."""

    manifest_plist: Path
    manifest_db: Path
    digest: bytes  # BLAKE3 of manifest_db, SentDigest once the backup succeeded
    epoch: int
    bodies: dict[str, Stream]  # fileID -> the encrypted body of `<fileID[:2]>/<fileID>`


class BackupKeys:
    """The phone's backup keystore (see the module docstring). Thread-safe; its own lock orders every change."""

    def __init__(self, data_dir: Path, seed: int, kdf_iterations: int = DEFAULT_KDF_ITERATIONS) -> None:
        self._path = data_dir / STATE
        self._catalog = data_dir / SENT_CATALOG
        self._seed = seed
        self._kdf_iterations = kdf_iterations
        self._lock = threading.Lock()
        self._state = self._load()

    # -- state

    def state(self) -> KeyState:
        with self._lock:
            return self._state

    @property
    def encrypts(self) -> bool:
        return self.state().encrypts

    def _load(self) -> KeyState:
        try:
            d = plistlib.loads(self._path.read_bytes())
        except FileNotFoundError:
            return KeyState()
        return KeyState(
            generation=d["Generation"],
            epoch=d["Epoch"],
            keybag=d.get("Keybag"),
            salt=d.get("Salt", b""),
            dpsl=d.get("DPSL", b""),
            iterations=d.get("ITER", 1),
            dpic=d.get("DPIC", 1),
            sent_digest=d.get("SentDigest"),
        )

    def _save(self, state: KeyState) -> None:
        d: dict[str, Any] = {"Generation": state.generation, "Epoch": state.epoch}
        if state.keybag is not None:
            d.update(Keybag=state.keybag, Salt=state.salt, DPSL=state.dpsl, ITER=state.iterations, DPIC=state.dpic)
        if state.sent_digest is not None:
            d["SentDigest"] = state.sent_digest
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_bytes(plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True))
        os.replace(tmp, self._path)
        self._state = state

    # -- the password

    def _class_keys(self, generation: int) -> dict[int, bytes]:
        return {c: derive(self._seed, "backup-class", generation, c) for c in KEYBAG_CLASSES}

    def _keybag(self, generation: int, password: str, salt: bytes, dpsl: bytes, iterations: int, dpic: int) -> bytes:
        return backup_keybag(
            password_key(password, dpsl, dpic, salt, iterations),
            bag_uuid=derive(self._seed, "backup-bag", generation)[:16],
            hmck=derive(self._seed, "backup-hmck", generation),
            salt=salt,
            iterations=iterations,
            dpsl=dpsl,
            dpic=dpic,
            class_uuids={c: derive(self._seed, "backup-class-uuid", generation, c)[:16] for c in KEYBAG_CLASSES},
            class_keys=self._class_keys(generation),
        )

    def verify(self, password: str) -> bool:
        """Whether ``password`` opens the phone's keybag (False when the phone does not encrypt)."""
        s = self.state()
        if s.keybag is None:
            return False
        return self._keybag(s.generation, password, s.salt, s.dpsl, s.iterations, s.dpic) == s.keybag

    def set_password(self, password: str | None) -> None:
        """Encrypt from now on with ``password`` (None: stop encrypting). A new generation either way: new class
        keys, and the host's backup cannot be continued (the next backup is full)."""
        with self._lock:
            generation = self._state.generation + 1
            if password is None:
                self._save(KeyState(generation=generation, epoch=self._state.epoch))
                return
            salt = derive(self._seed, "backup-salt", generation)[:20]
            dpsl = derive(self._seed, "backup-dpsl", generation)[:20]
            dpic, iterations = self._kdf_iterations, max(1, self._kdf_iterations // 1000)
            bag = self._keybag(generation, password, salt, dpsl, iterations, dpic)
            self._save(KeyState(generation, self._state.epoch, bag, salt, dpsl, iterations, dpic))

    def change_password(self, old: object, new: object) -> tuple[int, str]:
        """MobileBackup2 `ChangePassword`: (ErrorCode, ErrorDescription) for OldPassword ``old`` and NewPassword
        ``new`` (None: absent; an empty string counts as absent, as pymobiledevice3 never sends one).

        - no old, a new one, not encrypting: turn encryption on (a real phone first asks for its passcode on
          screen; the emulated one accepts);
        - the right old one and no new one: turn it off; the right old one and a new one: change it;
        - a wrong old one: 207 "Invalid password", what phones answer `idevicebackup2 encryption off` with a wrong
          password. [unverified] A phone already encrypting asked to turn it on (no old password), or an old
          password sent to a phone that does not encrypt: both clients refuse these before asking, so what a phone
          answers is not on record; the emulator answers 207 too, as a password that opens nothing.
        - neither, or one that is not a string: [unverified] ERROR_BAD_REQUEST.
        """
        if not all(p is None or isinstance(p, str) for p in (old, new)) or not (old or new):
            return ERROR_BAD_REQUEST, "ChangePassword needs OldPassword or NewPassword (strings)"
        if not old:
            if self.encrypts:
                return ERROR_INVALID_PASSWORD, INVALID_PASSWORD
            self.set_password(str(new))
            return 0, ""
        if not self.verify(str(old)):
            return ERROR_INVALID_PASSWORD, INVALID_PASSWORD
        self.set_password(str(new) if new else None)
        return 0, ""

    # -- backups

    def continues(self, host_keybag: bytes | None, host_manifest_db: Path) -> Path | None:
        """The plain catalog of the host's backup, when this encrypted backup can continue it: the host holds the
        phone's current keybag and exactly the Manifest.db the phone last sent. None: the backup is full."""
        s = self.state()
        if s.keybag is None or host_keybag != s.keybag or s.sent_digest is None or not self._catalog.is_file():
            return None
        if _digest(host_manifest_db) != s.sent_digest:
            return None
        return self._catalog

    def prepare(self, folder: Path, scratch: Path, *, full: bool) -> EncryptedBackup:
        """The encrypted form of the phone's backup folder ``folder`` (plain): Manifest.plist and Manifest.db
        written into ``scratch``, and a body for every file. A full backup draws every key afresh."""
        s = self.state()
        if s.keybag is None:
            raise RuntimeError("the phone does not encrypt its backups")
        epoch = s.epoch + 1 if full else s.epoch
        class_keys = self._class_keys(s.generation)
        db_key = derive(self._seed, "backup-manifest-key", s.generation, epoch)

        entries, extra, bodies = [], {}, {}
        for entry, mbfile in read_manifest_rows(folder / "Manifest.db"):
            fields = {k: v for k, v in mbfile.items() if k != "EncryptionKey"}
            if entry.flags == FLAG_FILE:
                key = derive(self._seed, "backup-file", s.generation, epoch, entry.file_id, sorted(fields.items()))
                pclass = entry.protection_class or DEFAULT_CLASS
                fields["EncryptionKey"] = wrapped_key(pclass, class_keys[pclass], key)
                entry = replace(entry, has_encryption_key=True)
                body = folder / entry.file_id[:2] / entry.file_id
                bodies[entry.file_id] = Stream(encrypted_size(_size(body)), _encrypting(key, body))
            entries.append(entry)
            extra[entry.file_id] = fields
        plain = scratch / "encrypt" / "Manifest.plain.db"
        plain.parent.mkdir(parents=True, exist_ok=True)
        write_manifest_db(plain, entries, extra)
        db = scratch / "encrypt" / "Manifest.db"
        with open(db, "wb") as out:
            for piece in encrypt(db_key, read_pieces(plain)):
                out.write(piece)
        plain.unlink()

        manifest = plistlib.loads((folder / "Manifest.plist").read_bytes())
        manifest.update(
            BackupKeyBag=s.keybag,
            IsEncrypted=True,
            ManifestKey=wrapped_key(MANIFEST_CLASS, class_keys[MANIFEST_CLASS], db_key),
        )
        plist = scratch / "encrypt" / "Manifest.plist"
        plist.write_bytes(plistlib.dumps(manifest, fmt=plistlib.FMT_BINARY, sort_keys=True))
        return EncryptedBackup(plist, db, _digest(db), epoch, bodies)

    def sent(self, backup: EncryptedBackup, folder: Path) -> None:
        """The host acknowledged ``backup`` (ErrorCode 0 was sent): remember it, so the next backup continues it."""
        with self._lock:
            tmp = self._catalog.with_name(self._catalog.name + ".tmp")
            shutil.copyfile(folder / "Manifest.db", tmp)
            os.replace(tmp, self._catalog)
            self._save(replace(self._state, epoch=backup.epoch, sent_digest=backup.digest))


def _encrypting(key: bytes, path: Path) -> Callable[[], Iterator[bytes]]:
    return lambda: encrypt(key, read_pieces(path))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _digest(path: Path) -> bytes:
    h = blake3.blake3()
    try:
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                h.update(piece)
    except OSError:
        return b""
    return h.digest()


# --------------------------------------------------------------------------------------------------- restore


class RestoreRefused(Exception):
    """The phone ends a restore with this ErrorCode and ErrorDescription."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def open_encrypted(staged: Path, password: object) -> dict[int, bytes]:
    """First step of restoring an encrypted backup, before any file is asked for (a phone checks the password
    first): unlock the staged Manifest.plist's keybag with the restore's ``password`` (Options.Password) and replace
    the staged Manifest.db with its plaintext. Returns the class keys. RestoreRefused: 207 for a missing or wrong
    password, ERROR_BAD_BACKUP for a keybag or Manifest.db that cannot be read."""
    try:
        manifest = plistlib.loads((staged / "Manifest.plist").read_bytes())
    except Exception as e:  # plistlib raises several types on damage
        raise RestoreRefused(ERROR_BAD_BACKUP, f"Error reading backup properties: {type(e).__name__}") from None
    if not isinstance(password, str) or not password:
        raise RestoreRefused(ERROR_INVALID_PASSWORD, RESTORE_INVALID_PASSWORD)
    bag, manifest_key = manifest.get("BackupKeyBag"), manifest.get("ManifestKey")
    try:
        class_keys = unlock_class_keys(parse_keybag(bag if isinstance(bag, bytes) else b""), password)
    except PasswordMismatch:
        raise RestoreRefused(ERROR_INVALID_PASSWORD, RESTORE_INVALID_PASSWORD) from None
    except KeybagError as e:
        raise RestoreRefused(ERROR_BAD_BACKUP, f"Error reading the backup keybag: {e}") from None
    try:
        db_key = unwrap_key(class_keys, manifest_key if isinstance(manifest_key, bytes) else b"")
        plain = decrypt_bytes(db_key, (staged / "Manifest.db").read_bytes())
    except (UnwrapError, PaddingError) as e:
        raise RestoreRefused(ERROR_BAD_BACKUP, f"Error decrypting Manifest.db: {e}") from None
    (staged / "Manifest.db").write_bytes(plain)
    return class_keys


def decrypt_staged(staged: Path, class_keys: dict[int, bytes], plain_keybag: bytes) -> None:
    """Last step: every staged `xx/<fileID>` decrypted in place with its own key, then Manifest.db without the
    keys and Manifest.plist as a plain backup's (``plain_keybag``, the phone's own, no ManifestKey, IsEncrypted
    false): the plain folder the phone holds. RestoreRefused (ERROR_BAD_BACKUP) names a file that does not decrypt;
    the phone is then left as it was."""
    entries, extra = [], {}
    where = "Manifest.db"
    try:
        for entry, mbfile in read_manifest_rows(staged / "Manifest.db"):
            where = f"{entry.domain}/{entry.relative_path}"
            fields = {k: v for k, v in mbfile.items() if k != "EncryptionKey"}
            wrapped = mbfile.get("EncryptionKey")
            if entry.flags == FLAG_FILE and isinstance(wrapped, bytes):
                _decrypt_in_place(staged / entry.file_id[:2] / entry.file_id, unwrap_key(class_keys, wrapped))
            entries.append(replace(entry, has_encryption_key=False))
            extra[entry.file_id] = fields
    except (UnwrapError, PaddingError, ManifestInvalid) as e:
        raise RestoreRefused(ERROR_BAD_BACKUP, f"Error decrypting {where}: {e}") from None
    write_manifest_db(staged / "Manifest.db", entries, extra)
    manifest = plistlib.loads((staged / "Manifest.plist").read_bytes())
    manifest.pop("ManifestKey", None)
    manifest.update(BackupKeyBag=plain_keybag, IsEncrypted=False)
    (staged / "Manifest.plist").write_bytes(plistlib.dumps(manifest, fmt=plistlib.FMT_BINARY, sort_keys=True))


def _decrypt_in_place(path: Path, key: bytes) -> None:
    tmp = path.with_name(path.name + ".plain")
    with open(tmp, "wb") as out:
        for piece in decrypt(key, read_pieces(path)):
            out.write(piece)
    os.replace(tmp, path)
