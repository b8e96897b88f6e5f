"""sync/encrypted.py against an independent reader: every file of an encrypted snapshot, decrypted from the vault with
the backup password, is what pyiosbackup (a reader of real iOS encrypted backups, installed with pymobiledevice3)
reads from the folder the phone wrote; the decrypted catalog is the plain twin's; the password is checked each time,
a cached catalog included; and what the cache holds of it is sealed, with the file keys still wrapped."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest
from pyiosbackup import Backup

from phonevault.store.trees import lookup
from phonevault.sync.catalog import CATALOG_CACHE_FORMAT, load_catalog
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.encrypted import BackupPassword
from phonevault.sync.errors import BackupPasswordNeeded, WrongBackupPassword
from phonevault.sync.manifest import FLAG_FILE
from phonevault.sync.mobilesync import import_folder

PASSWORD = "pässwörd 🔑"  # not ASCII: the keybag's KDF takes the password's UTF-8 bytes


@pytest.fixture
def encrypted(repo, tmp_path):
    phone = SyntheticPhone(31, 2 << 20, password=PASSWORD)
    folder = phone.write_backup(tmp_path / "enc", 0)
    return phone, folder, import_folder(repo, folder).snapshot


def test_every_file_decrypts_to_what_an_independent_reader_reads(repo, encrypted, tmp_path):
    _phone, folder, snap = encrypted
    theirs = {e.file_id: e.read_bytes() for e in Backup.from_path(folder, PASSWORD).iter_files()}
    catalog = load_catalog(repo, snap, BackupPassword(PASSWORD))
    assert catalog.keys is not None
    mine = {}
    for c in catalog:
        if c.flags != FLAG_FILE:
            continue
        entry = lookup(snap.tree, catalog.layout.backup_path(c.file_id), repo.get_blob)
        key = catalog.keys.key(c.file_id, c.relative_path)
        mine[c.file_id] = b"".join(catalog.keys.open(key, repo.read_file(entry), c.size, c.relative_path))
    assert mine == theirs and len(mine) > 20

    plain = import_folder(repo, SyntheticPhone(31, 2 << 20).write_backup(tmp_path / "plain", 0)).snapshot
    assert [replace(c, has_encryption_key=False) for c in catalog] == list(load_catalog(repo, plain))


def test_the_password_is_checked_every_time_and_the_cache_holds_only_wrapped_keys(repo, encrypted):
    _phone, _folder, snap = encrypted
    with pytest.raises(BackupPasswordNeeded):
        load_catalog(repo, snap)
    asked = []
    lazy = BackupPassword(lambda: asked.append(1) or PASSWORD)
    first = load_catalog(repo, snap, lazy)
    assert load_catalog(repo, snap, lazy).entries == first.entries and asked == [1]  # asked once, keybag opened once
    with pytest.raises(WrongBackupPassword) as e:
        load_catalog(repo, snap, BackupPassword(PASSWORD.upper()))  # cached by now: still refused
    assert e.value.exit_code == 12

    listing = lookup(snap.tree, "Manifest.db", repo.get_blob)
    key = b"catalog/%d/encrypted/" % CATALOG_CACHE_FORMAT + repo.key.blob_id(b"".join(listing.chunks))
    packed, wrapped = msgpack.unpackb(repo.cache.derived_get(key))
    assert wrapped == dict(first.keys.wrapped) and all(len(w) == 44 for w in wrapped.values())
    assert set(first.keys.class_keys.values()).isdisjoint(wrapped.values())
