"""Reading a backup the phone encrypted (iOS 10.2 and later) with the phone's backup password.

A snapshot of an encrypted backup holds the folder exactly as the phone sent it: Manifest.plist (plaintext: the
`BackupKeyBag` and the `ManifestKey`), Manifest.db encrypted with the key the ManifestKey wraps, and every file at
xx/<fileID> encrypted with its own key, which its Manifest.db row's MBFile `EncryptionKey` wraps. To read it:

  1. Manifest.plist from the vault -> the keybag; the password -> the class keys (sync/ioscrypto.py: two PBKDF2
     rounds of the phone's own cost, then RFC 3394 unwraps). The password is checked here, every time, before
     anything cached is used: a wrong one is WrongBackupPassword (exit 12) whatever the cache holds.
  2. The ManifestKey -> Manifest.db's key; the encrypted Manifest.db -> its plaintext, in memory only; parsed by
     sync/catalog.py exactly as a plain backup's (the same CatalogEntry rows, the same problems), and every file
     row's wrapped EncryptionKey read from it (`wrapped_keys`).
  3. A file's bytes: its wrapped key -> its key (the class named by the key's own u32le prefix); its stored bytes
     decrypted as they stream from the vault, the padding and the length (the row's Size) checked at the end.

What is cached (sync/catalog.py): the decrypted catalog and the *wrapped* file keys, as one value of the vault's
LMDB cache, sealed (AES-GCM) with the cache key derived from the vault's master key, keyed by the encrypted
Manifest.db's blob ids. Nothing decrypted is written to a file anywhere (no temp files: SQLite reads the image
from memory). The class keys and the password live in this process only, so the cache alone opens no file: the
vault password shows the file list of a backup someone browsed, the backup password is still needed for its bytes.

Errors, each one line (sync/errors.py): BackupPasswordNeeded (none given, no terminal), WrongBackupPassword (12),
EncryptionUnsupported (a keybag of iOS before 10.2, an unknown version), KeybagDamaged (truncated, a class key or
the ManifestKey that does not unwrap), ManifestUndecryptable (bad padding, or no SQLite database inside),
FileUndecryptable (one file: its key does not unwrap, its padding or length is wrong; named, the others go on).

Memory: Manifest.plist; the encrypted Manifest.db and its plaintext while it is decrypted, then the plaintext and
SQLite's copy of it while it is read (as for a plain one, ~850 bytes a row), and the wrapped keys (~100 bytes a
file row); a file streams one chunk at a time. Time: the first read of a snapshot's catalog decodes every file row's
MBFile once more for its key (~100 µs a row: 6 s for 60 000 files), then it is cached; every command pays the
keybag's PBKDF2 rounds once (a real phone's DPIC of 10 000 000 is seconds).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass

from phonevault.store.errors import PathNotFound
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import lookup

from .errors import (
    BackupPasswordNeeded,
    EncryptionUnsupported,
    FileUndecryptable,
    KeybagDamaged,
    ManifestUndecryptable,
    WrongBackupPassword,
)
from .ioscrypto import (
    Keybag,
    KeybagError,
    PaddingError,
    PasswordMismatch,
    UnwrapError,
    decrypt,
    decrypt_bytes,
    parse_keybag,
    unlock_class_keys,
    unwrap_key,
)
from .mbfile import decode_mbfile
from .plists import read_manifest_plist

#: Manifest.plist is a few hundred KB at most (its Applications dict); anything larger is refused unread.
MAX_MANIFEST_PLIST = 64 << 20
SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupPassword:
    """The phone's backup passwords for this command, looked for only when an encrypted snapshot is read, and the
    keybags they opened in this process: a keybag costs its PBKDF2 rounds once per command, however many snapshots
    share it (a diff reads two). `source` gives the passwords at hand: a str, several, or None; a function is called
    once, when the first encrypted snapshot is read. Each keybag is tried with every password at hand; when none
    opens it, `ask` (a prompt on a terminal; None without one) is asked once for that keybag, so a diff across a
    password change can be given both, as options or at two prompts."""

    __slots__ = ("_ask", "_asked", "_candidates", "_source", "_unlocked")

    def __init__(
        self,
        source: Callable[[], str | Iterable[str] | None] | str | Iterable[str] | None,
        ask: Callable[[str], str | None] | None = None,
    ) -> None:
        self._source = source if callable(source) else (lambda: source)
        self._ask = ask
        self._asked = False
        self._candidates: list[str] = []
        self._unlocked: dict[bytes, dict[int, bytes]] = {}

    def _at_hand(self) -> list[str]:
        if not self._asked:
            value = self._source()
            self._candidates = [value] if isinstance(value, str) else list(value or ())
            self._asked = True
        return self._candidates

    def class_keys(self, keybag: bytes, snapshot: str) -> dict[int, bytes]:
        """The class keys of `keybag` that one of the passwords unwraps (see the module docstring for the errors)."""
        if (keys := self._unlocked.get(keybag)) is not None:
            return keys
        try:
            bag = parse_keybag(keybag)
        except KeybagError as e:
            if e.unsupported:
                raise EncryptionUnsupported(snapshot, f"its BackupKeyBag cannot be read: {e}") from None
            raise KeybagDamaged(snapshot, str(e)) from None
        candidates = self._at_hand()
        for password in candidates:
            if (keys := _unlock(bag, password, snapshot)) is not None:
                self._unlocked[keybag] = keys
                return keys
        if self._ask is not None and (password := self._ask(snapshot)) is not None:
            if (keys := _unlock(bag, password, snapshot)) is None:
                raise WrongBackupPassword(snapshot)
            candidates.append(password)
            self._unlocked[keybag] = keys
            return keys
        if not candidates:
            raise BackupPasswordNeeded(snapshot)
        raise WrongBackupPassword(snapshot)


def _unlock(bag: Keybag, password: str, snapshot: str) -> dict[int, bytes] | None:
    """The class keys `password` unwraps, None if it is not this keybag's password."""
    try:
        return unlock_class_keys(bag, password)
    except PasswordMismatch:
        return None
    except KeybagError as e:
        raise KeybagDamaged(snapshot, str(e)) from None


@dataclass(frozen=True, slots=True)
class Unlocked:
    """An encrypted snapshot opened with its password: its class keys and Manifest.db's key."""

    class_keys: Mapping[int, bytes]
    manifest_db_key: bytes


def unlock(repo: Repository, snap: SnapshotRecord, password: BackupPassword) -> Unlocked:
    """Read the snapshot's Manifest.plist from the vault and open its keybag and ManifestKey with `password`."""
    where = snap.hex[:12]
    entry = lookup(snap.tree, "Manifest.plist", repo.get_blob)
    if entry is None or entry.is_dir:
        raise PathNotFound("Manifest.plist", f"snapshot {where} (its keybag is there)")
    if entry.size > MAX_MANIFEST_PLIST:
        raise KeybagDamaged(where, f"Manifest.plist is {entry.size:,} bytes; refused as absurd")
    plist = read_manifest_plist(b"".join(repo.read_file(entry)), f"snapshot {where}: Manifest.plist")
    if plist.keybag is None:
        raise KeybagDamaged(where, "Manifest.plist has no BackupKeyBag")
    class_keys = password.class_keys(plist.keybag, where)
    if plist.manifest_key is None:
        raise EncryptionUnsupported(
            where, "Manifest.plist has no ManifestKey (a backup of iOS before 10.2 keeps Manifest.db otherwise)"
        )
    try:
        manifest_db_key = unwrap_key(class_keys, plist.manifest_key)
    except UnwrapError as e:
        raise KeybagDamaged(where, f"its ManifestKey: {e}") from None
    return Unlocked(class_keys, manifest_db_key)


def decrypt_manifest_db(unlocked: Unlocked, ciphertext: bytearray, where: str) -> bytearray:
    """Manifest.db's plaintext, in memory. `ciphertext` is emptied. ManifestUndecryptable if it does not decrypt
    into an SQLite database."""
    try:
        image = decrypt_bytes(unlocked.manifest_db_key, ciphertext)
    except PaddingError as e:
        raise ManifestUndecryptable(f"{where}: Manifest.db", f"does not decrypt with its ManifestKey: {e}") from None
    finally:
        ciphertext.clear()
    if not image.startswith(SQLITE_MAGIC):
        raise ManifestUndecryptable(
            f"{where}: Manifest.db", "decrypts with its ManifestKey into something that is not an SQLite database"
        )
    return image


def wrapped_keys(image: bytes | bytearray, where: str = "Manifest.db") -> dict[str, bytes]:
    """fileID -> the wrapped EncryptionKey of every file row that has one, from a decrypted Manifest.db's bytes
    (parsed in memory: SQLite's `deserialize`, no file). A row whose MBFile does not decode is left out here: the
    catalog names it."""
    if image[18:20] == b"\x02\x02":  # a WAL-mode header cannot be opened from memory; the file is whole without -wal
        image = image[:18] + b"\x01\x01" + image[20:]
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(image)
        out: dict[str, bytes] = {}
        for fid, blob in conn.execute("SELECT fileID, file FROM Files WHERE flags = 1"):
            if not isinstance(fid, str) or not isinstance(blob, bytes):
                continue
            try:
                key = decode_mbfile(blob).get("EncryptionKey")
            except ValueError:
                continue
            if isinstance(key, bytes):
                out[fid] = key
        return out
    except sqlite3.DatabaseError as e:
        raise ManifestUndecryptable(where, f"its Files table cannot be read once decrypted ({e})") from None
    finally:
        conn.close()


STORED_PLAIN = b""  # FileKeys.key of a file the vault holds decrypted


@dataclass(frozen=True, slots=True)
class FileKeys:
    """What decrypts an encrypted snapshot's files: its class keys and each file row's wrapped key."""

    class_keys: Mapping[int, bytes]
    wrapped: Mapping[str, bytes]
    # fileIDs the vault holds decrypted (sync/decrypted.py): their key is STORED_PLAIN, and they read as stored
    stored_plain: Container[str] = frozenset()

    def key(self, file_id: str, name: str) -> bytes:
        """The file's own key; FileUndecryptable (naming `name`, its domain path) if it has none that unwraps.
        STORED_PLAIN for a file the vault holds decrypted."""
        if file_id in self.stored_plain:
            return STORED_PLAIN
        wrapped = self.wrapped.get(file_id)
        if wrapped is None:
            raise FileUndecryptable(name, "its Manifest.db row has no EncryptionKey")
        try:
            return unwrap_key(self.class_keys, wrapped)
        except UnwrapError as e:
            raise FileUndecryptable(name, str(e)) from None

    def open(self, key: bytes, pieces: Iterable[bytes], size: int, name: str) -> Iterator[bytes]:
        """The file's plaintext from its stored bytes, streamed. FileUndecryptable at the end if the padding is
        wrong or the plaintext is not the `size` bytes its row says: take nothing as the file before the end. With
        STORED_PLAIN, `pieces` are the plaintext already (only the length is checked)."""
        return _checked(decrypt(key, pieces) if key else iter(pieces), size, name)


def _checked(plain: Iterator[bytes], size: int, name: str) -> Iterator[bytes]:
    got = 0
    try:
        for piece in plain:
            got += len(piece)
            yield piece
    except PaddingError as e:
        raise FileUndecryptable(name, str(e)) from None
    if got != size:
        raise FileUndecryptable(name, f"it decrypts to {got:,} bytes, its Manifest.db row says {size:,}")
