"""Encrypted backups stored decrypted (`--store-decrypted`), through the real `phonevault` command.

The synthetic phone writes the same content as an encrypted folder (twice: a second full backup draws fresh keys
for every file) and as a plain one. Stored with the option: the second encrypted backup adds next to nothing, the
plain twin adds next to nothing after them, `export` gives back each encrypted folder bit for bit (by hash),
`export --decrypt` is the plain twin, `ls`/`extract` need no backup password, and a wrong password is exit 12 with
nothing stored. Over the wire: the emulator's encrypted backups stored decrypted, exported as sent, restored.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.emulator.rekey import rekey_folder
from phonevault.sync.ioscrypto import decrypt, encrypt, parse_keybag, unlock_class_keys, unwrap_key
from phonevault.sync.mbfile import decode_mbfile
from tests.conftest import js

PASSWORD = "tr0ub4dor&3"
SEED, SIZE = 29, 2 << 20
DCIM = "CameraRollDomain/Media/DCIM/100APPLE"


def files_of(root: Path) -> dict[str, tuple]:
    """Every file under root: name -> (SHA-256, mode, mtime_ns)."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode,
                                         p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }  # fmt: skip


def vault_bytes(vault: Path) -> int:
    return sum(p.stat().st_size for p in (vault / "packs").rglob("*") if p.is_file())


def stored(vault: Path) -> dict[str, str]:
    return {p.relative_to(vault).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in vault.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two full encrypted backups of one phone on day 0 (each with fresh keys) and its plain twin."""
    root = tmp_path_factory.mktemp("phones")
    enc = SyntheticPhone(SEED, SIZE, password=PASSWORD)
    out = {"enc_a": enc.write_backup(root / "enc_a", 0)}
    out["enc_b"] = rekey_folder(enc.write_backup(root / "enc_b", 0), PASSWORD, b"second full backup")
    out["plain"] = SyntheticPhone(SEED, SIZE).write_backup(root / "plain", 0)
    return out


def test_folders_re_encrypt_every_file(folders):
    """The premise: the two encrypted backups share no file bytes, the plain one shares none with them."""
    a, b = files_of(folders["enc_a"]), files_of(folders["enc_b"])
    keyed = [p for p in a if "/" in p]
    assert keyed and all(a[p][0] != b[p][0] for p in keyed)


def test_stored_decrypted_dedups_exports_as_sent_and_browses_without_password(pv, cli_env, folders, tmp_path):
    vault = Path(cli_env["PHONEVAULT_REPO"])
    pv("init", check=True)
    opt = ["--store-decrypted", "--backup-password", PASSWORD]
    r = pv("import", str(folders["enc_a"]), *opt)
    assert r.returncode == 0, r.stderr
    assert "stored decrypted" in r.stderr
    first = vault_bytes(vault)
    pv("import", str(folders["enc_b"]), *opt, check=True)
    second = vault_bytes(vault) - first
    pv("import", str(folders["plain"]), check=True)
    plain = vault_bytes(vault) - first - second
    # Fresh keys for every file, yet the second full backup adds only its tree, its plists and the pack overhead;
    # so does the plain twin (its Manifest.db differs: it has no EncryptionKey fields).
    assert second < first / 10, (first, second)
    assert plain < first / 4, (first, plain)

    snaps = js(pv("snapshots", "--json"))
    assert [s["encrypted_by_phone"] for s in snaps] == [True, True, False]
    keyed = sum(1 for _ in folders["enc_a"].glob("??/*")) + 1  # every file and Manifest.db
    assert [s["stored_decrypted"] for s in snaps] == [keyed, keyed, 0]
    a, b, p = (s["id"][:8] for s in snaps)
    for snap, name in ((a, "enc_a"), (b, "enc_b")):  # bit for bit as the phone sent it
        pv("export", snap, "--to", str(tmp_path / name), check=True)
        assert files_of(tmp_path / name / folders[name].name) == files_of(folders[name])

    # Browsed with no backup password anywhere (no option, no environment, no terminal).
    listing = js(pv("ls", a, DCIM, "--json"))
    photo = next(x for x in listing if x["type"] == "file")
    pv("extract", a, photo["path"], "--to", str(tmp_path / "x"), check=True)
    fid = photo["file_id"]
    want = (folders["plain"] / fid[:2] / fid).read_bytes()
    assert (tmp_path / "x" / photo["path"]).read_bytes() == want
    mine = js(pv("diff", a, b, "--json"))["changes"]
    assert [c for c in mine if "Domain" in c["path"]] == []
    assert js(pv("ls", p, DCIM, "--json")) == listing

    pv("export", b, "--decrypt", "--to", str(tmp_path / "dec"), check=True)
    got, twin = files_of(tmp_path / "dec" / folders["plain"].name), files_of(folders["plain"])
    assert got.keys() == twin.keys()
    assert {k for k in got if got[k] != twin[k]} == {"Manifest.plist"}  # Manifest.db and every file: equal


def test_a_wrong_password_with_store_decrypted_is_exit_12_and_stores_nothing(pv, cli_env, folders):
    vault = Path(cli_env["PHONEVAULT_REPO"])
    pv("init", check=True)
    before = stored(vault)
    r = pv("import", str(folders["enc_a"]), "--store-decrypted", "--backup-password", "nope")
    assert r.returncode == 12, r.stderr
    assert "wrong backup password" in r.stderr and "Traceback" not in r.stderr
    assert stored(vault) == before


def test_a_file_that_does_not_re_encrypt_is_stored_as_sent(pv, cli_env, folders, tmp_path):
    """A file whose padding is wrong cannot be stored decrypted: it is kept as the phone sent it, named, and the
    export is still the folder as sent."""
    src = tmp_path / "src"
    shutil.copytree(folders["enc_a"], src)
    victim = next(p for p in sorted(src.glob("??/*")) if p.stat().st_size >= 32)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # the last block decrypts to garbage padding
    victim.write_bytes(bytes(data))
    pv("init", check=True)
    r = pv("import", str(src), "--store-decrypted", "--backup-password", PASSWORD)
    assert r.returncode == 3, r.stderr
    assert victim.name in r.stderr and "stored as the phone sent it" in r.stderr
    (doc,) = js(pv("snapshots", "--json"))
    snap = doc["id"][:8]
    assert doc["stored_decrypted"] == sum(1 for _ in src.glob("??/*"))  # Manifest.db and all files but one
    pv("export", snap, "--to", str(tmp_path / "out"), check=True)
    assert files_of(tmp_path / "out" / folders["enc_a"].name) == files_of(src)
    # One file is still as the phone sent it, so browsing asks for the backup password again; with it, the others
    # read as stored and that one is named.
    r = pv("ls", snap, DCIM)
    assert r.returncode != 0 and "needs its backup password" in r.stderr
    env = dict(cli_env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD)
    assert js(pv("ls", snap, DCIM, "--json", env=env))
    r = pv("export", snap, "--decrypt", "--to", str(tmp_path / "dec"), env=env)
    assert r.returncode == 3 and "cannot be decrypted" in r.stderr, r.stderr
    got, want = files_of(tmp_path / "dec" / folders["plain"].name), files_of(folders["plain"])
    assert {k for k in want if got.get(k) != want[k]} == {"Manifest.plist", f"{victim.parent.name}/{victim.name}"}


@pytest.mark.parametrize(
    "damage, says",
    [
        ("manifest_db", "does not decrypt with its ManifestKey"),
        ("keybag", "BackupKeyBag is damaged"),
    ],
)
def test_a_backup_that_cannot_be_opened_is_one_line_and_stores_nothing(pv, cli_env, folders, tmp_path, damage, says):
    src = tmp_path / "src"
    shutil.copytree(folders["enc_a"], src)
    if damage == "manifest_db":
        db = src / "Manifest.db"
        db.write_bytes(db.read_bytes()[:-16])  # the last block gone: the padding is wrong
    else:
        plist = plistlib.loads((src / "Manifest.plist").read_bytes())
        plist["BackupKeyBag"] = plist["BackupKeyBag"][:-7]
        (src / "Manifest.plist").write_bytes(plistlib.dumps(plist, fmt=plistlib.FMT_BINARY))
    vault = Path(cli_env["PHONEVAULT_REPO"])
    pv("init", check=True)
    before = stored(vault)
    r = pv("import", str(src), "--store-decrypted", "--backup-password", PASSWORD)
    assert r.returncode not in (0, 3) and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("phonevault:")]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert stored(vault) == before


def test_an_emulated_phones_encrypted_backups_stored_decrypted_export_as_sent_and_restore(pv, cli_env, tmp_path):
    """Over MobileBackup2: the phone encrypts, `backup --store-decrypted` stores it decrypted (Manifest.db comes
    last, so it is decrypted once the device has sent everything). The plain export is a backup the phone's own
    keys open: every file decrypts with the key its exported Manifest.db row wraps into the phone's plain bytes, so it
    is encrypt(that key, those bytes), which is what the phone sent (the cipher is deterministic given the key).
    Browsing needs no password; a wrong one commits nothing (exit 12); the snapshot restores."""
    from phonevault.sync.emulator import Emulator

    with Emulator(tmp_path / "phone", seed=SEED, size=SIZE) as phone:
        env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=phone.address)
        vault = Path(cli_env["PHONEVAULT_REPO"])
        pv("init", check=True)
        pv("device", "encryption", "on", env=dict(env, PHONEVAULT_NEW_BACKUP_PASSWORD=PASSWORD), check=True)
        day0 = {p.name: p.read_bytes() for p in phone.device_dir.glob("??/*") if p.is_file()}
        before = stored(vault)
        r = pv("backup", "--store-decrypted", "--backup-password", "nope", env=env)
        assert r.returncode == 12 and "wrong backup password" in r.stderr and "Traceback" not in r.stderr
        assert {k for k in stored(vault) if not k.startswith("packs/")} == {
            k for k in before if not k.startswith("packs/")
        }  # nothing committed (the packs of what arrived are reused by the next backup)
        pv("backup", "--store-decrypted", "--backup-password", PASSWORD, env=env, check=True)
        (snap,) = js(pv("snapshots", "--json", env=env))
        s = snap["id"][:8]

        listing = js(pv("ls", s, DCIM, "--json", env=env))  # no password anywhere
        photo = next(x for x in listing if x["type"] == "file")
        pv("extract", s, photo["path"], "--to", str(tmp_path / "x"), env=env, check=True)
        assert (tmp_path / "x" / photo["path"]).read_bytes() == day0[photo["file_id"]]

        pv("export", s, "--to", str(tmp_path / "sent"), env=env, check=True)
        sent = tmp_path / "sent" / phone.udid
        plist = plistlib.loads((sent / "Manifest.plist").read_bytes())
        assert plist["IsEncrypted"] is True
        class_keys = unlock_class_keys(parse_keybag(plist["BackupKeyBag"]), PASSWORD)
        image = b"".join(decrypt(unwrap_key(class_keys, plist["ManifestKey"]), [(sent / "Manifest.db").read_bytes()]))
        scratch = tmp_path / "scratch.db"  # test data: the exported Manifest.db decrypted, to read its rows
        scratch.write_bytes(image)
        with sqlite3.connect(scratch) as db:
            rows = db.execute("SELECT fileID, file FROM Files WHERE flags = 1").fetchall()
        db.close()
        assert {fid for fid, _ in rows} == set(day0)
        for fid, blob in rows:
            key = unwrap_key(class_keys, decode_mbfile(blob)["EncryptionKey"])
            cipher = (sent / fid[:2] / fid).read_bytes()
            assert b"".join(decrypt(key, [cipher])) == day0[fid]
            assert b"".join(encrypt(key, iter([day0[fid]]))) == cipher

        # And by an independent reader of real iOS encrypted backups (pyiosbackup), the keybag, ManifestKey and
        # every EncryptionKey as a phone writes them.
        from pyiosbackup import Backup

        assert {e.file_id: e.read_bytes() for e in Backup.from_path(sent, PASSWORD).iter_files()} == day0

        pv("export", s, "--decrypt", "--to", str(tmp_path / "plain"), env=env, check=True)
        plain = tmp_path / "plain" / phone.udid
        assert {p.name: p.read_bytes() for p in plain.glob("??/*") if p.is_file()} == day0

        # A second full backup: the phone encrypts every file under a fresh key; held in the local spool until
        # Manifest.db comes, then stored decrypted, it adds its Manifest.db (as sent and decrypted) and its trees.
        first = vault_bytes(vault)
        pv("backup", "--full", "--store-decrypted", "--backup-password", PASSWORD, env=env, check=True)
        assert phone.reports[-1].kind == "full"
        assert vault_bytes(vault) - first < first / 4, (first, vault_bytes(vault) - first)
        assert not list(Path(cli_env["PHONEVAULT_CACHE_DIR"]).rglob("spool-*"))  # the spool is gone

        phone.set_day(1)
        pv("backup", "--store-decrypted", "--backup-password", PASSWORD, env=env, check=True)  # incremental
        pv("restore", s, "--yes", "--no-reboot", env=dict(env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD), check=True)
        assert {p.name: p.read_bytes() for p in phone.device_dir.glob("??/*") if p.is_file()} == day0


def test_a_copy_of_the_vault_keeps_what_was_stored_decrypted(pv, cli_env, folders, tmp_path):
    """`copy --to` re-seals every chunk for the other vault and keeps each entry's key: the copy exports the folder
    as the phone sent it and browses without the backup password."""
    pv("init", check=True)
    pv("import", str(folders["enc_a"]), "--store-decrypted", "--backup-password", PASSWORD, check=True)
    other = tmp_path / "other-vault"
    pv("copy", "--to", str(other), "--init", env=dict(cli_env, PHONEVAULT_TO_PASSWORD="other"), check=True)
    there = dict(cli_env, PHONEVAULT_REPO=str(other), PHONEVAULT_PASSWORD="other")
    (snap,) = js(pv("snapshots", "--json", env=there))
    pv("export", snap["id"][:8], "--to", str(tmp_path / "out"), env=there, check=True)
    assert files_of(tmp_path / "out" / folders["enc_a"].name) == files_of(folders["enc_a"])
    assert js(pv("ls", snap["id"][:8], DCIM, "--json", env=there))


def test_a_remembered_password_stores_the_devices_backups_decrypted(pv, cli_env, folders, tmp_path):
    """`device remember-password`: kept sealed in the vault (its bytes appear nowhere), checked against the device's
    latest encrypted backup (a wrong one is exit 12 and stores nothing); every later import of the device is stored
    decrypted without the password given; a stale one stores as sent and says so; --forget ends it."""
    vault = Path(cli_env["PHONEVAULT_REPO"])
    udid = folders["enc_a"].name
    pv("init", check=True)
    r = pv("device", "remember-password", udid, "--backup-password", "stale one")
    assert r.returncode == 0 and "not checked" in r.stdout, r.stderr
    r = pv("import", str(folders["enc_a"]))  # the remembered password opens nothing: stored as sent, named
    assert r.returncode == 3 and "remembered backup password does not open" in r.stderr, r.stderr
    assert js(pv("snapshots", "--json"))[-1]["stored_decrypted"] == 0

    before = stored(vault)
    r = pv("device", "remember-password", udid, "--backup-password", "wrong")
    assert r.returncode == 12 and "wrong backup password" in r.stderr and stored(vault) == before
    pv("device", "remember-password", udid, "--backup-password", PASSWORD, check=True)
    assert not any(PASSWORD.encode() in p.read_bytes() for p in vault.rglob("*") if p.is_file())
    pv("import", str(folders["enc_b"]), check=True)
    last = js(pv("snapshots", "--json"))[-1]
    assert last["stored_decrypted"] > 0
    assert js(pv("ls", last["id"][:8], DCIM, "--json"))  # no password given anywhere

    assert "forgotten" in pv("device", "remember-password", udid, "--forget", check=True).stdout
    assert not list((vault / "settings").rglob("*backup-password*"))
    pv("import", str(folders["enc_a"]), check=True)
    assert js(pv("snapshots", "--json"))[-1]["stored_decrypted"] == 0


def test_an_emulated_phones_remembered_password_until_it_changes_on_the_phone(pv, cli_env, tmp_path):
    from phonevault.sync.emulator import Emulator

    with Emulator(tmp_path / "phone", seed=SEED, size=SIZE) as phone:
        env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=phone.address)
        pv("init", check=True)
        pv("device", "encryption", "on", env=dict(env, PHONEVAULT_NEW_BACKUP_PASSWORD=PASSWORD), check=True)
        pv("device", "remember-password", phone.udid, "--backup-password", PASSWORD, env=env, check=True)
        pv("backup", env=env, check=True)
        (first,) = js(pv("snapshots", "--json", env=env))
        assert first["stored_decrypted"] > 0
        assert js(pv("ls", first["id"][:8], DCIM, "--json", env=env))

        changed = dict(env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD, PHONEVAULT_NEW_BACKUP_PASSWORD="changed")
        pv("device", "password", env=changed, check=True)
        r = pv("backup", env=env)  # full, under the new password: committed as sent, the stale password named
        assert r.returncode == 3 and "remembered backup password does not open" in r.stderr, r.stderr
        second = js(pv("snapshots", "--json", env=env))[-1]
        assert second["stored_decrypted"] == 0 and second["id"] != first["id"]
        pv("export", second["id"][:8], "--decrypt", "--to", str(tmp_path / "plain"),
           env=dict(env, PHONEVAULT_BACKUP_PASSWORD="changed"), check=True)  # fmt: skip
        got = {p.name: p.read_bytes() for p in (tmp_path / "plain" / phone.udid).glob("??/*") if p.is_file()}
        assert got == {p.name: p.read_bytes() for p in phone.device_dir.glob("??/*") if p.is_file()}
        # Restore takes the remembered password when none is given (no option, no environment, no terminal).
        pv("restore", first["id"][:8], "--yes", "--no-reboot", env=env, check=True)
        assert {p.name: p.read_bytes() for p in phone.device_dir.glob("??/*") if p.is_file()} == got


def test_stored_decrypted_leaves_nothing_private_in_plaintext_on_disk(cli_env, pv, tmp_path):
    """The plaintext is in the vault only sealed, the held uploads only in a sealed, unlinked spool, the catalog
    only sealed in the cache: the phone's identity, names, fileIDs and contents appear nowhere on disk."""
    from phonevault.sync.emulator import Emulator
    from tests.test_no_plaintext import needles, scan

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    vault, cache = Path(cli_env["PHONEVAULT_REPO"]), Path(cli_env["PHONEVAULT_CACHE_DIR"])
    with Emulator(tmp_path / "phone", seed=71, size=6 << 20) as phone:
        env = dict(cli_env, TMPDIR=str(tmpdir), USBMUXD_SOCKET_ADDRESS=phone.address)
        pv("init", env=env, check=True)
        pv("device", "encryption", "on", env=dict(env, PHONEVAULT_NEW_BACKUP_PASSWORD=PASSWORD), check=True)
        pv("backup", "--store-decrypted", "--backup-password", PASSWORD, env=env, check=True)
        pv("ls", "latest", env=env, check=True)
        wanted = needles(phone.device_dir)
        assert len(wanted) >= 15, wanted
        assert scan([vault, cache, tmpdir], wanted) == []


def test_a_remembered_password_never_reads_a_pipe_in_place_of_info_plist(pv, cli_env, folders, tmp_path):
    """Finding the device of a folder to import (its remembered password) reads only a regular Info.plist: a FIFO
    there (a hostile folder) once blocked the import forever. It is named by the import, as without a password."""
    src = tmp_path / "src" / folders["enc_a"].name
    shutil.copytree(folders["enc_a"], src)
    (src / "Info.plist").unlink()
    os.mkfifo(src / "Info.plist")
    pv("init", check=True)
    pv("device", "remember-password", src.name, "--backup-password", PASSWORD, check=True)
    r = pv("import", str(src), timeout=120)
    assert r.returncode == 3 and "Info.plist: not a regular file" in r.stderr, r.stderr
    assert js(pv("snapshots", "--json"))[-1]["stored_decrypted"] > 0
