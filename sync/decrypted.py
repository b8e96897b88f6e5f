"""Encrypted backups stored decrypted, so they deduplicate (`import/device backup --store-decrypted`; opt-in).

Why: a phone encrypts every file of a backup with its own key, and a full backup or a password change draws fresh
keys for every file, so the same photo is new ciphertext each time and nothing deduplicates (across two backups, or
with the same photo in a plain backup). Stored decrypted, the photo is the same plaintext chunks every time.

What is stored, per file whose Manifest.db row carries an `EncryptionKey` (and for Manifest.db itself, whose key
the `ManifestKey` of Manifest.plist wraps): the plaintext, chunked and deduplicated like any file, in a tree entry
whose `cipher_key` is the file's own unwrapped 32-byte key (store/trees.py). The phone's file cipher is AES-256-CBC
with a zero IV and PKCS#7 padding (sync/ioscrypto.py): deterministic given the key, so encrypting the plaintext
again with that key gives back the bytes the phone sent. That is checked before anything is dropped: while a file
is decrypted, its plaintext is encrypted again and hashed beside the bytes the phone sent; only if both hashes are
equal is the plaintext entry staged. Otherwise (a key that does not unwrap, a wrong padding) the file is stored as
the phone sent it and named in `problems`. Manifest.plist (the keybag, the wrapped ManifestKey), Info.plist and
Status.plist are stored as sent.

What the option gives away, and what not: the vault's password (its master key) now reads the content of those
files, which only the phone's backup password protected before; that is why it is off by default. Neither the
backup password nor the keybag's class keys are stored: the per-file keys open only the file they belong to, whose
plaintext is stored anyway, so the keychain's items (wrapped inside keychain-backup.plist by class keys) stay
protected by the backup password.

Reading: `as_sent`/`write_as_sent` re-encrypt on the way out, so `export` (plain) writes the folder bit for bit as
the phone sent it, and a restore sends the device what it sent; `stored_keys` gives the catalog (sync/catalog.py)
file keys that pass a decrypted entry through as it is stored, so `ls`, `diff`, `extract` and `export --decrypt`
need no backup password when `BackupMeta.all_decrypted`; with some files still as sent, they ask for it as before.

Where: a folder import (`open_folder`, then `Decrypting.stage_file` per file as the folder is walked) and a device
backup (`Holding`: what the device sends is held in a sealed local spool until Manifest.db, which comes last, gives
the keys; `decrypt_staged`). The opt-in is `--store-decrypted` with the password, or the device's password kept by
`device remember-password` (sync/decrypted_remembered.py).

Memory: the decrypted Manifest.db while the wrapped keys are read out of it, then ~100 bytes a keyed file (the
wrapped keys by path); files stream one 1 MiB block at a time. Time: decrypting, encrypting again and hashing is
AES twice and BLAKE3 twice over the bytes (hardware AES: a few hundred MB/s).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path

from blake3 import blake3

from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.spool import Spool
from phonevault.store.trees import FileEntry, iter_tree, lookup
from phonevault.store.writer import SnapshotWriter

from .encrypted import BackupPassword, FileKeys, Unlocked, decrypt_manifest_db, unlock, wrapped_keys
from .errors import BackupPasswordNeeded, KeybagDamaged, ManifestInvalid
from .ioscrypto import PaddingError, UnwrapError, decrypt, encrypt, unwrap_key
from .layouts import MANIFEST_DB
from .plists import read_manifest_plist
from .records import BackupMeta
from .writeout import FileWriters, write_pieces

BLOCK = 1 << 20


class Everything:
    """The container holding every fileID: every keyed file of the snapshot is stored decrypted."""

    def __contains__(self, _item: object) -> bool:
        return True


def as_sent(entry: FileEntry, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes the phone sent for `entry`, from its stored bytes `pieces` (encrypted again if it was stored
    decrypted)."""
    if is_held(entry):  # a device asking for what it sent in this very backup: not stored yet
        raise PhonevaultError(f"{entry.path}: received in this backup and not stored yet")
    return encrypt(entry.cipher_key, iter(pieces)) if entry.cipher_key else iter(pieces)


def write_as_sent(repo: Repository, e: FileEntry, local: Path, writers: FileWriters) -> int:
    """Export one entry stored decrypted as the file the phone sent (mode and mtime as stored); its length."""
    pieces = as_sent(e, repo.read_file(e))
    if e.size <= FileWriters.SMALL:
        data = b"".join(pieces)
        writers.submit(local, e, data)
        return len(data)
    return write_pieces(pieces, local, e)


# ------------------------------------------------------------------------------------------------ storing


@dataclass(slots=True)
class Decrypting:
    """What stores one backup decrypted: the keys of its keyed files by backup path, what was done, what not."""

    class_keys: Mapping[int, bytes]
    manifest_key: bytes
    wrapped: dict[str, bytes]  # backup path (xx/<fileID>) -> the row's wrapped EncryptionKey
    decrypted: int = 0
    problems: list[str] = field(default_factory=list)

    def keyed(self, rel: str) -> bool:
        return rel == MANIFEST_DB.listing or rel in self.wrapped

    def _key(self, rel: str) -> bytes | None:
        if rel == MANIFEST_DB.listing:
            return self.manifest_key
        try:
            return unwrap_key(self.class_keys, self.wrapped[rel])
        except UnwrapError as e:
            self.problems.append(f"{rel}: its key does not unwrap ({e}): stored as the phone sent it")
            return None

    def stage_file(self, writer: SnapshotWriter, rel: str, full: str, st: os.stat_result) -> bool:
        """Stage the file at `full` decrypted if it is keyed and re-encrypts bit for bit; False if not staged (the
        caller stores it as sent; an OSError is the caller's to name, as for any file)."""
        if not self.keyed(rel) or (key := self._key(rel)) is None:
            return False
        try:
            with open(full, "rb") as f:
                entry = self.stage(writer, rel, st.st_mode, st.st_mtime_ns, key, iter(lambda: f.read(BLOCK), b""))
        except OSError:
            return False
        return entry is not None

    def stage(
        self, writer: SnapshotWriter, rel: str, mode: int, mtime_ns: int, key: bytes, sent: Iterator[bytes]
    ) -> FileEntry | None:
        """Stage the plaintext of `sent` with `key` as its cipher_key, if encrypting it again gives `sent` bit for
        bit; None (nothing staged, the problem named) if not."""
        got, again = blake3(), blake3()

        def hashed() -> Iterator[bytes]:
            for piece in sent:
                got.update(piece)
                yield piece

        fw = writer.open_file(rel, mode, mtime_ns)

        def plain() -> Iterator[bytes]:
            for piece in decrypt(key, hashed()):
                fw.write(piece)
                yield piece

        try:
            for piece in encrypt(key, plain()):
                again.update(piece)
        except PaddingError as e:
            # The chunks already written are no snapshot's: the next prune drops them.
            self.problems.append(f"{rel}: does not decrypt with its key ({e}): stored as the phone sent it")
            return None
        if got.digest() != again.digest():
            self.problems.append(f"{rel}: encrypting it again does not give the bytes the phone sent: stored as sent")
            return None
        self.decrypted += 1
        return fw.close(cipher_key=key)


def open_folder(folder: Path, password: BackupPassword) -> Decrypting:
    """The keys of an encrypted iOS 10.2+ folder, from its Manifest.plist and Manifest.db, opened with `password`
    before anything is stored (WrongBackupPassword, exit 12; KeybagDamaged; ManifestUndecryptable)."""
    where = folder.name
    plist = read_manifest_plist((folder / "Manifest.plist").read_bytes(), f"{folder}/Manifest.plist")
    return _open(plist.keybag, plist.manifest_key, bytearray((folder / "Manifest.db").read_bytes()), password, where)


def _open(
    keybag: bytes | None, manifest_key: bytes | None, ciphertext: bytearray, password: BackupPassword, where: str
) -> Decrypting:
    if keybag is None:
        raise KeybagDamaged(where, "Manifest.plist has no BackupKeyBag")
    class_keys = password.class_keys(keybag, where)
    if manifest_key is None:
        raise KeybagDamaged(where, "Manifest.plist has no ManifestKey")
    try:
        db_key = unwrap_key(class_keys, manifest_key)
    except UnwrapError as e:
        raise KeybagDamaged(where, f"its ManifestKey: {e}") from None
    image = decrypt_manifest_db(Unlocked(class_keys, db_key), ciphertext, where)
    wrapped = {MANIFEST_DB.backup_path(fid): w for fid, w in wrapped_keys(image, f"{where}: Manifest.db").items()}
    return Decrypting(class_keys, db_key, wrapped)


#: A held file's placeholder `cipher_key`: this prefix + its 8-byte id, 13 bytes (a real key is 32, so the two are
#: told apart by length). Never committed: `Holding.resolve` replaces every placeholder, and `device_meta` refuses
#: a state that still holds one.
HELD = b"held:"
#: What a device uploads that has a key of its own: `[Snapshot/]xx/<fileID>` (a Manifest.db row's) and Manifest.db.
_KEYED_UPLOAD = re.compile(r"(?:Snapshot/)?(?:[0-9a-f]{2}/[0-9a-f]{40}|Manifest\.db)")


def is_held(e: FileEntry) -> bool:
    return e.cipher_key.startswith(HELD) and len(e.cipher_key) == len(HELD) + 8


class Holding:
    """A device backup with --store-decrypted: the device sends Manifest.db (which holds the file keys) after the
    files, so each file it uploads to `[Snapshot/]xx/<fileID>` is held in a sealed spool in the local cache
    (store/spool.py: AES-GCM with the cache key; unlinked as it is made, so a crash leaves nothing) instead of going
    into packs, and staged as a zero-chunk placeholder that the device's moves and copies carry along. Once the
    backup ends, `resolve` reads the spool back in order and stages each held file decrypted where it can, else as
    the device sent it. Disk: the spool holds what the device sent this time (for a full backup, the backup);
    memory: one block."""

    def __init__(self, writer: SnapshotWriter, spool: Spool) -> None:
        self.writer = writer
        self.spool = spool
        self._next = 0

    def wants(self, rel: str) -> bool:
        return _KEYED_UPLOAD.fullmatch(rel) is not None

    def open_file(self, rel: str, mode: int, mtime_ns: int) -> HeldFile:
        self.writer.open_file(rel, mode, mtime_ns)  # the writer's own path checks, before a byte is held
        self._next += 1
        return HeldFile(self, rel, mode, mtime_ns, self._next)

    def close(self) -> None:
        self.spool.close()

    def pieces(self, e: FileEntry) -> Iterator[bytes]:
        """A held file's bytes as the device sent them (Manifest.db, read before the backup is resolved), found by
        reading the spool through."""
        held = int.from_bytes(e.cipher_key[len(HELD) :], "big")
        return (bytes(batch[1]) for batch in self.spool if batch[0] == held)

    def resolve(self, dec: Decrypting | None) -> None:
        """Stage every held file: decrypted and checked (`Decrypting.stage`) where its final path has a key, else as
        it was sent. A file staged under two paths (the device copied it) is staged once and copied."""
        paths: dict[int, list[str]] = {}
        for path, e in list(self.writer.state.items()):
            if is_held(e):
                paths.setdefault(int.from_bytes(e.cipher_key[len(HELD) :], "big"), []).append(path)
        as_sent: set[int] = set()
        for held, pieces in self._files():
            if held not in paths:
                continue  # removed, or sent again, by the device meanwhile
            path = paths[held][0]
            e = self.writer.get(path)
            key = dec._key(path) if dec is not None and dec.keyed(path) else None
            if key is None:
                self._stage_sent(e, pieces)
            elif dec.stage(self.writer, path, e.mode, e.mtime_ns, key, pieces) is None:
                as_sent.add(held)
                continue
            self._copies(paths.pop(held))
        if as_sent:  # read again what could not be stored decrypted, and store it as sent
            for held, pieces in self._files():
                if held in as_sent:
                    self._stage_sent(self.writer.get(paths[held][0]), pieces)
                    self._copies(paths.pop(held))
        for held_paths in paths.values():  # empty files: nothing of them was spooled
            self._stage_sent(self.writer.get(held_paths[0]), iter(()))
            self._copies(held_paths)

    def _files(self) -> Iterator[tuple[int, Iterator[bytes]]]:
        for held, batches in groupby(self.spool, key=lambda batch: batch[0]):
            yield held, (bytes(batch[1]) for batch in batches)

    def _stage_sent(self, e: FileEntry, pieces: Iterator[bytes]) -> None:
        fw = self.writer.open_file(e.path, e.mode, e.mtime_ns)
        for piece in pieces:
            fw.write(piece)
        fw.close()

    def _copies(self, paths: list[str]) -> None:
        for other in paths[1:]:
            self.writer.copy(paths[0], other)


@dataclass(slots=True)
class HeldFile:
    """One file being held (`Holding.open_file`): the DeviceLink writes its blocks, then closes it."""

    holding: Holding
    path: str
    mode: int
    mtime_ns: int
    held: int
    size: int = 0

    def write(self, data: bytes | memoryview) -> None:
        if data:
            self.size += len(data)
            self.holding.spool.append([self.held, bytes(data)])  # a batch: [id, block]

    def close(self) -> FileEntry:
        marker = HELD + self.held.to_bytes(8, "big")
        entry = FileEntry(self.path, self.size, self.mode, self.mtime_ns, (), marker)
        self.holding.writer.put_entry(entry)  # no chunks: always staged
        return entry


def decrypt_staged(
    writer: SnapshotWriter,
    read: Callable[[str], bytes | None],
    password: BackupPassword,
    where: str,
    holding: Holding | None = None,
) -> Decrypting:
    """A device backup once the device has sent it (Manifest.db comes last): the held files (`holding`) staged
    decrypted, and so is any keyed file staged as sent (inherited by an incremental from a backup stored as sent;
    read back from the vault). WrongBackupPassword before anything changes."""
    plist_bytes, db = read("Manifest.plist"), read(MANIFEST_DB.listing)
    if not plist_bytes or db is None:
        raise ManifestInvalid("Manifest.plist", f"{where}: the device sent no Manifest.plist or Manifest.db")
    plist = read_manifest_plist(plist_bytes, "Manifest.plist")
    dec = _open(plist.keybag, plist.manifest_key, bytearray(db), password, where)
    for rel in [MANIFEST_DB.listing, *sorted(dec.wrapped)]:  # a held file's placeholder has a cipher_key: skipped
        e = writer.get(rel)
        if e is None or e.is_dir or e.cipher_key or (key := dec._key(rel)) is None:
            continue
        dec.stage(writer, rel, e.mode, e.mtime_ns, key, writer.read_file(e))
    if holding is not None:
        holding.resolve(dec)
    return dec


def decrypting_folder(folder: Path, layout: str, password: BackupPassword, problems: list[str]) -> Decrypting | None:
    """`open_folder` for a folder of the layout iOS 10.2+ writes; for an older one, None and a problem named (its
    files are stored as the phone sent them)."""
    if layout != MANIFEST_DB.name:
        problems.append(f"--store-decrypted: a {layout} backup (before iOS 10) is stored as the phone encrypted it")
        return None
    return open_folder(folder, password)


def decrypted_meta(dec: Decrypting | None) -> dict:
    """`BackupMeta`'s `decrypted` and `all_decrypted` for a folder import (which starts empty) that `dec` stored."""
    if dec is None:
        return {}
    complete = not dec.problems and dec.decrypted == len(dec.wrapped) + 1
    return {"decrypted": dec.decrypted, "all_decrypted": complete}


def device_meta(state: Mapping[str, FileEntry], dec: Decrypting | None) -> dict:
    """`BackupMeta`'s `decrypted` and `all_decrypted` for a device backup's whole staged tree (an incremental
    inherits entries stored decrypted by an earlier backup)."""
    if any(is_held(e) for e in state.values()):  # never committed: it names no bytes
        raise AssertionError("a held file was not resolved before the commit")
    decrypted = sum(1 for e in state.values() if e.cipher_key)
    if not decrypted:
        return {}
    keyed = [MANIFEST_DB.listing, *dec.wrapped] if dec is not None else []
    complete = dec is not None and not dec.problems and all((e := state.get(p)) and e.cipher_key for p in keyed)
    return {"decrypted": decrypted, "all_decrypted": complete}


# ------------------------------------------------------------------------------------------------ reading


def manifest_decrypted(repo: Repository, snap: SnapshotRecord) -> bool:
    """Whether the snapshot's Manifest.db is stored decrypted (then its catalog is read as a plain one's)."""
    e = lookup(snap.tree, MANIFEST_DB.listing, repo.get_blob)
    return e is not None and bool(e.cipher_key)


def stored_keys(repo: Repository, snap: SnapshotRecord, meta: BackupMeta, password: BackupPassword | None, catalog):
    """`catalog` with the keys that read its files when some are stored decrypted (`meta.decrypted`): those pass
    through as stored. With every keyed file and Manifest.db stored decrypted no password is asked; otherwise the
    backup password opens the keybag for the files stored as the phone sent them."""
    if not meta.decrypted:
        return catalog
    if meta.all_decrypted:
        return replace(catalog, keys=FileKeys({}, {}, Everything()))
    stored_plain = frozenset(
        e.path.rsplit("/", 1)[1] for e in iter_tree(snap.tree, repo.get_blob) if e.cipher_key and "/" in e.path
    )
    if catalog.keys is not None:  # Manifest.db stored as sent: the catalog was opened with the password already
        return replace(catalog, keys=replace(catalog.keys, stored_plain=stored_plain))
    if password is None:
        raise BackupPasswordNeeded(snap.hex[:12])
    unlocked = unlock(repo, snap, password)
    listing = lookup(snap.tree, MANIFEST_DB.listing, repo.get_blob)
    assert listing is not None
    wrapped = wrapped_keys(bytearray(b"".join(repo.read_file(listing))), f"snapshot {snap.hex[:12]}: Manifest.db")
    return replace(catalog, keys=FileKeys(unlocked.class_keys, wrapped, stored_plain))
