"""Backups the phone encrypted, browsed with its backup password through the real `phonevault` command.

The fixtures are MobileSync folders the synthetic phone writes for one seed twice: with a backup password
(iOS-encrypted: keybag, ManifestKey, encrypted Manifest.db and files) and without one (the plain twin of the same
content), on day 0 and day 1. What is asked of the encrypted snapshots is what the plain twin gives: the same listing,
the same diff by domain path, the same photo bytes, and `export --decrypt` the plain folder file by file; plain
`export` is the encrypted folder bit for bit. Each bad input (a wrong password, a damaged or unsupported keybag, a
Manifest.db or a file that does not decrypt, a file key that does not unwrap) is one line and a non-zero exit, with
nothing stored changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import signal
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.ioscrypto import decrypt, encrypt, parse_keybag, unlock_class_keys, unwrap_key, wrapped_key
from phonevault.sync.manifest import FLAG_FILE, file_id
from phonevault.sync.mbfile import decode_mbfile, encode_mbfile
from tests.conftest import js
from tests.test_no_plaintext import PAUSE_AT_CATALOG, needles, scan

PASSWORD = "tr0ub4dor&3"
SEED, SIZE = 23, 2 << 20
DCIM = "CameraRollDomain/Media/DCIM/100APPLE"


def one_line(r, code: int) -> str:
    """The command failed with `code` and said why in exactly one line (progress lines aside), no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("importing ", "extracting"))]
    assert len(lines) == 1, r.stderr
    return lines[0]


def files_of(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: name -> (SHA-256, mode, mtime_ns) / ("dir", mode)."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns) if p.is_file() else ("dir",)
    return out


def stored(vault: Path) -> dict[str, str]:
    """What the vault holds, byte for byte (the local cache is not the vault)."""
    return {p.relative_to(vault).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in vault.rglob("*")
            if p.is_file()}  # fmt: skip


def backup_path(domain_path: str) -> str:
    domain, _, rel = domain_path.partition("/")
    fid = file_id(domain, rel)
    return f"{fid[:2]}/{fid}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The encrypted and the plain folder of one phone on days 0 and 1, each written fresh in its own root."""
    root = tmp_path_factory.mktemp("phones")
    out = {}
    for name, password in (("enc", PASSWORD), ("plain", None)):
        phone = SyntheticPhone(SEED, SIZE, password=password)
        for day in (0, 1):
            out[f"{name}{day}"] = phone.write_backup(root / f"{name}{day}", day)
    return out


@pytest.fixture
def plain_env(cli_env, tmp_path) -> dict[str, str]:
    return dict(
        cli_env, PHONEVAULT_REPO=str(tmp_path / "plain-vault"), PHONEVAULT_CACHE_DIR=str(tmp_path / "plain-cache")
    )


def imported(pv, env, *dirs: Path) -> list[dict]:
    """A new vault holding `dirs` in order; its snapshots, oldest first."""
    pv("init", env=env, check=True)
    for d in dirs:
        pv("import", str(d), env=env, check=True)
    return js(pv("snapshots", "--json", env=env))


def test_browse_extract_and_diff_an_encrypted_phone_as_its_plain_twin(pv, cli_env, plain_env, folders, tmp_path):
    enc = imported(pv, cli_env, folders["enc0"], folders["enc1"])
    plain = imported(pv, plain_env, folders["plain0"], folders["plain1"])
    assert [s["encrypted_by_phone"] for s in enc] == [True, True]
    assert [s["files"] for s in enc] == [s["files"] for s in plain]  # snapshots: file counts, no password needed
    assert js(pv("stats", "--json"))["total"]["snapshots"] == 2
    env = dict(cli_env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD)
    e0, e1, p0, p1 = enc[0]["id"][:8], enc[1]["id"][:8], plain[0]["id"][:8], plain[1]["id"][:8]

    # ls: the same rows as the plain twin's, at the top and in a folder.
    assert js(pv("ls", e1, "--json", env=env)) == js(pv("ls", p1, "--json", env=plain_env))
    listing = js(pv("ls", e1, DCIM, "--json", env=env))
    assert listing == js(pv("ls", p1, DCIM, "--json", env=plain_env))

    # extract: a photo's original bytes, mode and mtime, as the plain backup holds it.
    photo = next(x for x in listing if x["type"] == "file" and x["name"].endswith((".JPG", ".HEIC")))
    r = pv("extract", e1, photo["path"], "--to", str(tmp_path / "x"), env=env)
    assert r.returncode == 0, r.stderr
    got = tmp_path / "x" / photo["path"]
    original = folders["plain1"] / backup_path(photo["path"])
    assert got.read_bytes() == original.read_bytes() and got.stat().st_size == photo["size"]
    assert got.stat().st_mtime == original.stat().st_mtime

    # diff by domain path: the same rows as the plain twin's diff (the backup folder's own files aside: the
    # encrypted Manifest.db is padded), with its plain sizes; with PATH and --stat too.
    def by_domain(doc):
        return [c for c in doc["changes"] if "Domain" in c["path"]]

    de = js(pv("diff", e0, e1, "--json", env=env))
    dp = js(pv("diff", p0, p1, "--json", env=plain_env))
    assert by_domain(de) == by_domain(dp) and len(by_domain(de)) > 3
    assert js(pv("diff", e0, e1, "CameraRollDomain", "--json", env=env))["changes"] == [
        c for c in dp["changes"] if c["path"].startswith("CameraRollDomain/")
    ]
    stat_e = {d["domain"]: d for d in js(pv("diff", e0, e1, "--stat", "--json", env=env))["domains"] if d["domain"]}
    stat_p = {
        d["domain"]: d for d in js(pv("diff", p0, p1, "--stat", "--json", env=plain_env))["domains"] if d["domain"]
    }
    assert stat_e == stat_p


def test_export_decrypt_is_the_plain_backup_and_export_stays_encrypted(pv, cli_env, folders, tmp_path):
    enc = imported(pv, cli_env, folders["enc0"])
    snap = enc[0]["id"][:8]
    assert pv("export", snap, "--to", str(tmp_path / "as-is")).returncode == 0
    assert files_of(tmp_path / "as-is" / folders["enc0"].name) == files_of(folders["enc0"])  # bit for bit

    r = pv("export", snap, "--decrypt", "--to", str(tmp_path / "plain"), "--backup-password", PASSWORD)
    assert r.returncode == 0, r.stderr
    out, twin = tmp_path / "plain" / folders["plain0"].name, folders["plain0"]
    got, want = files_of(out), files_of(twin)
    assert got.keys() == want.keys()
    assert {k for k in got if got[k] != want[k]} == {"Manifest.plist"}  # Manifest.db and every file: equal
    mine, theirs = (
        plistlib.loads((out / "Manifest.plist").read_bytes()),
        plistlib.loads((twin / "Manifest.plist").read_bytes()),
    )
    assert mine["IsEncrypted"] is False and "ManifestKey" not in mine and "BackupKeyBag" not in mine
    assert mine == {k: v for k, v in theirs.items() if k != "BackupKeyBag"}  # the plain phone's keybag is its own

    # What it wrote is a plain backup: it imports as one and browses without a password.
    other = dict(cli_env, PHONEVAULT_REPO=str(tmp_path / "v2"), PHONEVAULT_CACHE_DIR=str(tmp_path / "c2"))
    again = imported(pv, other, out)
    assert again[0]["encrypted_by_phone"] is False
    assert js(pv("ls", again[0]["id"][:8], DCIM, "--json", env=other))


def test_where_the_backup_password_comes_from(pv, cli_env, folders, tmp_path):
    enc = imported(pv, cli_env, folders["enc0"])
    snap = enc[0]["id"][:8]
    before = stored(Path(cli_env["PHONEVAULT_REPO"]))
    line = one_line(pv("ls", snap, stdin=subprocess.DEVNULL), 1)  # none given, no terminal to ask on
    assert "needs its backup password" in line and "PHONEVAULT_BACKUP_PASSWORD" in line
    (tmp_path / "pw").write_text(PASSWORD + "\nignored\n")
    assert pv("ls", snap, env=dict(cli_env, PHONEVAULT_BACKUP_PASSWORD_FILE=str(tmp_path / "pw"))).returncode == 0
    assert pv("ls", snap, "--backup-password", PASSWORD).returncode == 0
    # Wrong, from each source: exit 12, whether or not the catalog is cached by now.
    for args, env in (
        (["--backup-password", "nope"], cli_env),
        ([], dict(cli_env, PHONEVAULT_BACKUP_PASSWORD="Tr0ub4dor&3")),
    ):
        for cmd in (
            ["ls", snap],
            ["diff", snap, snap],
            ["extract", snap, DCIM, "--to", str(tmp_path / "x")],
            ["export", snap, "--decrypt", "--to", str(tmp_path / "x")],
        ):
            line = one_line(pv(*cmd, *args, env=env), 12)
            assert line == f"phonevault: snapshot {enc[0]['id'][:12]}: wrong backup password (it unwraps no key of " \
                           "this backup's keybag)"  # fmt: skip
    assert not (tmp_path / "x").exists()
    assert stored(Path(cli_env["PHONEVAULT_REPO"])) == before
    # A plain snapshot never asks: no password anywhere, no terminal.
    plain = dict(cli_env, PHONEVAULT_REPO=str(tmp_path / "pv"), PHONEVAULT_CACHE_DIR=str(tmp_path / "pc"))
    p = imported(pv, plain, folders["plain0"])
    assert pv("ls", p[0]["id"][:8], env=plain, stdin=subprocess.DEVNULL).returncode == 0


# --- bad input ------------------------------------------------------------------------------------------------


def _set_plist(folder: Path, **changes) -> None:
    path = folder / "Manifest.plist"
    d = plistlib.loads(path.read_bytes())
    d.update(changes)
    path.write_bytes(plistlib.dumps(d, fmt=plistlib.FMT_BINARY))


def _records(blob: bytes, edit) -> bytes:
    """The keybag with each (tag, value) passed through `edit` (None drops the record)."""
    out, at = bytearray(), 0
    while at < len(blob):
        tag, (n,) = blob[at : at + 4], struct.unpack(">I", blob[at + 4 : at + 8])
        value = edit(tag, blob[at + 8 : at + 8 + n])
        if value is not None:
            out += tag + struct.pack(">I", len(value)) + value
        at += 8 + n
    return bytes(out)


def _file_key(phone: SyntheticPhone, domain_path: str) -> bytes:
    f = next(f for f in phone.files(0) if f"{f.entry.domain}/{f.entry.relative_path}" == domain_path)
    keys = unlock_class_keys(parse_keybag(phone.keybag()), PASSWORD)
    return unwrap_key(keys, phone.encryption_key(f))


def _photo(phone: SyntheticPhone) -> str:
    return next(
        f"{f.entry.domain}/{f.entry.relative_path}"
        for f in phone.files(0)
        if f.entry.flags == FLAG_FILE and f.entry.relative_path.startswith("Media/DCIM/") and f.entry.size > 1000
    )


def _edit_manifest_db(phone: SyntheticPhone, folder: Path, edit) -> None:
    """Decrypt the folder's Manifest.db (test data: a scratch file beside it), let `edit` change it, encrypt it back."""
    db = folder / "Manifest.db"
    scratch = folder.parent / "scratch.db"
    scratch.write_bytes(b"".join(decrypt(phone.manifest_db_key(), [db.read_bytes()])))
    with sqlite3.connect(scratch) as conn:
        edit(conn)
    conn.close()
    db.write_bytes(b"".join(encrypt(phone.manifest_db_key(), iter([scratch.read_bytes()]))))
    scratch.unlink()


def _damage(kind: str, phone: SyntheticPhone, folder: Path) -> str | None:
    """Damage `folder` as `kind` says; returns the domain path of the file concerned, if one is."""
    bag = phone.keybag()
    if kind == "truncated keybag":
        _set_plist(folder, BackupKeyBag=bag[: len(bag) - 30])
    elif kind == "unknown keybag version":
        _set_plist(folder, BackupKeyBag=_records(bag, lambda t, v: struct.pack(">I", 9) if t == b"VERS" else v))
    elif kind == "keybag of iOS before 10.2":
        old = _records(bag, lambda t, v: None if t in (b"DPSL", b"DPIC", b"DPWT") else v)
        _set_plist(folder, BackupKeyBag=_records(old, lambda t, v: struct.pack(">I", 3) if t == b"VERS" else v))
    elif kind == "Manifest.db does not decrypt":
        size = (folder / "Manifest.db").stat().st_size
        (folder / "Manifest.db").write_bytes(hashlib.shake_256(b"not a database").digest(size))
    elif kind == "Manifest.db decrypts to no database":
        (folder / "Manifest.db").write_bytes(b"".join(encrypt(phone.manifest_db_key(), iter([b"not SQLite " * 99]))))
    elif kind in ("file key does not unwrap", "file padding is wrong"):
        path = _photo(phone)
        if kind == "file key does not unwrap":

            def flip_key(conn):
                fid = file_id(*path.split("/", 1))
                (blob,) = conn.execute("SELECT file FROM Files WHERE fileID = ?", (fid,)).fetchone()
                fields = decode_mbfile(blob)
                key = bytearray(fields["EncryptionKey"])
                key[20] ^= 1
                fields["EncryptionKey"] = bytes(key)
                conn.execute("UPDATE Files SET file = ? WHERE fileID = ?", (encode_mbfile(fields), fid))

            _edit_manifest_db(phone, folder, flip_key)
        else:  # the same length, every block right but the last byte: PKCS#7 padding can never end in 0
            target = folder / backup_path(path)
            key = _file_key(phone, path)
            plain = b"".join(decrypt(key, [target.read_bytes()]))
            n = 16 - len(plain) % 16
            padded = plain + bytes([n]) * (n - 1) + b"\x00"
            enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
            target.write_bytes(enc.update(padded) + enc.finalize())
        return path
    else:
        raise AssertionError(kind)
    return None


@pytest.mark.parametrize(
    "kind, code, says",
    [
        ("truncated keybag", 1, "BackupKeyBag is damaged: truncated"),
        ("unknown keybag version", 1, "version 9 is unknown"),
        (
            "keybag of iOS before 10.2",
            1,
            "a backup of iOS before 10.2 (one PBKDF2 round), which this phonevault does not read",
        ),
        ("Manifest.db does not decrypt", 1, "Manifest.db: does not decrypt with its ManifestKey"),
        (
            "Manifest.db decrypts to no database",
            1,
            "Manifest.db: decrypts with its ManifestKey into something that is not",
        ),
        ("file key does not unwrap", 3, "cannot be decrypted: the wrapped key does not unwrap with the class"),
        ("file padding is wrong", 3, "cannot be decrypted: its PKCS#7 padding is wrong"),
    ],
)
def test_bad_input_is_one_line_a_non_zero_exit_and_changes_nothing_stored(pv, cli_env, tmp_path, kind, code, says):
    phone = SyntheticPhone(SEED, SIZE, password=PASSWORD)
    folder = phone.write_backup(tmp_path / "src", 0)
    path = _damage(kind, phone, folder)
    snap = imported(pv, cli_env, folder)[0]["id"][:8]
    vault = Path(cli_env["PHONEVAULT_REPO"])
    before = stored(vault)
    env = dict(cli_env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD)
    if path is None:  # the catalog cannot be had: every browsing command says so in one line
        for cmd in (["ls", snap], ["extract", snap, DCIM, "--to", str(tmp_path / "x")], ["diff", snap, snap]):
            assert says in one_line(pv(*cmd, env=env), code), cmd
        r = pv("export", snap, "--decrypt", "--to", str(tmp_path / "plain"), env=env)
        assert says in one_line(r, code)
        assert not (tmp_path / "plain").exists()
    else:  # one file: named in one line, every other one extracted or exported
        r = pv("extract", snap, DCIM, "--to", str(tmp_path / "x"), env=env)
        assert r.returncode == 3, r.stderr
        named = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
        assert len(named) == 1 and named[0].startswith(f"warning: {path}: cannot be decrypted: "), r.stderr
        assert says in named[0] and named[0].endswith("; not extracted")
        assert not (tmp_path / "x" / path).exists() and not list((tmp_path / "x").rglob(".phonevault-*"))
        assert len(list((tmp_path / "x").rglob("*.*"))) >= 2  # the other photos are there
        r = pv("extract", snap, DCIM, "--to", str(tmp_path / "strict"), "--strict", env=env)
        assert r.returncode == 1 and not (tmp_path / "strict").exists(), r.stderr
        r = pv("export", snap, "--decrypt", "--to", str(tmp_path / "plain"), env=env)
        assert r.returncode == 3 and any(says in ln for ln in r.stderr.splitlines()), r.stderr
        out = tmp_path / "plain" / phone.udid
        assert not (out / backup_path(path)).exists() and (out / "Manifest.db").is_file()
    assert pv("export", snap, "--to", str(tmp_path / "as-is")).returncode == 0  # still exported as it was stored
    assert files_of(tmp_path / "as-is" / phone.udid) == files_of(folder)
    # Nothing stored changed (export records itself in the log: compare without the log's new entries).
    after = stored(vault)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith("events/") for k in after.keys() - before.keys()), after.keys() - before.keys()


# --- nothing decrypted on disk --------------------------------------------------------------------------------


def test_nothing_decrypted_lands_on_disk(cli_env, folders, tmp_path):
    """After browsing, extracting and exporting elsewhere, and an `ls` killed while it parses the decrypted
    Manifest.db, neither the vault, the cache nor $TMPDIR holds a name, a fileID or a content of the phone."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    vault, cache = Path(cli_env["PHONEVAULT_REPO"]), Path(cli_env["PHONEVAULT_CACHE_DIR"])
    env = dict(cli_env, TMPDIR=str(tmpdir), PHONEVAULT_BACKUP_PASSWORD=PASSWORD)
    exe = str(Path(sys.executable).with_name("phonevault"))

    def pv(*args):
        r = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
        assert r.returncode == 0, (args, r.stderr)

    pv("init")
    pv("import", str(folders["enc0"]))
    wanted = {k: v for k, v in needles(folders["plain0"]).items() if k != "source folder"}
    wanted[PASSWORD] = PASSWORD.encode()
    assert len(wanted) >= 15, wanted
    pv("ls", "latest", DCIM)
    pv("extract", "latest", DCIM, "--to", str(tmp_path / "x"))
    pv("export", "latest", "--decrypt", "--to", str(tmp_path / "plain"))
    pv("diff", "latest", "latest")
    assert scan([vault, cache, tmpdir], wanted) == []

    for d in cache.iterdir():  # a cold cache: the next `ls` decrypts and parses the Manifest.db again
        subprocess.run(["rm", "-rf", str(d)], check=True)
    p = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AT_CATALOG, "ls", "latest"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert p.stderr is not None
    for line in p.stderr:
        if "PAUSED-IN-CATALOG" in line:
            break
    else:
        pytest.fail(f"ls never parsed a catalog (exit {p.wait()})")
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    assert scan([vault, cache, tmpdir], wanted) == []
    assert list(tmpdir.rglob("*")) == []


# --- re-encryption ----------------------------------------------------------------------------------------------


def test_a_file_the_phone_re_encrypted_is_not_modified_in_a_diff(pv, cli_env, tmp_path):
    """A full backup after a password change re-encrypts every file with a fresh key: other ciphertext for the same
    bytes. diff compares the plaintext there, so only a file whose bytes changed is modified."""
    phone = SyntheticPhone(SEED, SIZE, password=PASSWORD)
    first = phone.write_backup(tmp_path / "a", 0)
    second = phone.write_backup(tmp_path / "b", 0)
    photos = sorted(
        f"{f.entry.domain}/{f.entry.relative_path}"
        for f in phone.files(0)
        if f.entry.flags == FLAG_FILE and f.entry.relative_path.startswith("Media/DCIM/")
    )
    keys = unlock_class_keys(parse_keybag(phone.keybag()), PASSWORD)
    rekeyed: dict[str, bytes] = {}
    for n, path in enumerate(photos):
        target = second / backup_path(path)
        plain = b"".join(decrypt(_file_key(phone, path), [target.read_bytes()]))
        if n == 0:  # this one's bytes change too
            plain = b"X" + plain[1:]
        new_key = hashlib.sha256(f"fresh key {path}".encode()).digest()
        target.write_bytes(b"".join(encrypt(new_key, iter([plain]))))
        rekeyed[file_id(*path.split("/", 1))] = wrapped_key(3, keys[3], new_key)

    def rewrap(conn):
        for fid, wrapped in rekeyed.items():
            (blob,) = conn.execute("SELECT file FROM Files WHERE fileID = ?", (fid,)).fetchone()
            fields = decode_mbfile(blob)
            fields["EncryptionKey"] = wrapped
            conn.execute("UPDATE Files SET file = ? WHERE fileID = ?", (encode_mbfile(fields), fid))

    _edit_manifest_db(phone, second, rewrap)
    snaps = imported(pv, cli_env, first, second)
    a, b = snaps[0]["id"][:8], snaps[1]["id"][:8]
    env = dict(cli_env, PHONEVAULT_BACKUP_PASSWORD=PASSWORD)
    changes = js(pv("diff", a, b, "CameraRollDomain", "--json", env=env))["changes"]
    assert [(c["path"], c["change"]) for c in changes] == [(photos[0], "modified")]
    shown = js(pv("diff", a, b, "CameraRollDomain", "--metadata", "--json", env=env))["changes"]
    assert sorted((c["path"], c["change"]) for c in shown) == [(photos[0], "modified")] + [
        (p, "metadata") for p in photos[1:]
    ]
    assert len(photos) >= 3
    assert js(pv("diff", a, b, "CameraRollDomain", "--json", env=env))["changes"] == changes  # digests cached


def _asked_on_a_terminal(cli_env: dict, answer: str, *args: str) -> subprocess.CompletedProcess:
    """Run phonevault with a terminal as stdin (and no controlling terminal, so the prompt reads stdin), wait for the
    backup password prompt on stderr, type `answer`."""
    exe = str(Path(sys.executable).with_name("phonevault"))
    master, slave = os.openpty()
    p = subprocess.Popen(
        [exe, *args], env=cli_env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    os.close(slave)
    assert p.stderr is not None and p.stdout is not None
    said = b""
    while b"backup password" not in said:
        piece = os.read(p.stderr.fileno(), 4096)
        assert piece, f"no prompt before the end: {said!r} (exit {p.wait()})"
        said += piece
    os.write(master, answer.encode() + b"\n")
    out, err = p.communicate(timeout=300)
    os.close(master)
    return subprocess.CompletedProcess(args, p.returncode, out.decode(), (said + err).decode())


def test_the_backup_password_is_asked_for_on_a_terminal(pv, cli_env, folders):
    snap = imported(pv, cli_env, folders["enc0"])[0]["id"][:8]
    r = _asked_on_a_terminal(cli_env, PASSWORD, "ls", snap, DCIM, "--json")
    assert r.returncode == 0, r.stderr
    assert [x["name"] for x in json.loads(r.stdout)] and PASSWORD not in r.stderr  # not echoed
    r = _asked_on_a_terminal(cli_env, "guess", "ls", snap)
    assert r.returncode == 12 and "wrong backup password" in r.stderr


# --- the "done when", over the wire -------------------------------------------------------------------


def test_backups_an_encrypted_phone_sent_are_browsed_diffed_and_exported(pv, cli_env, tmp_path):
    """The emulated phone encrypts its backups (a password set through MobileBackup2); what it sent is browsed, a
    photo extracted with its original bytes, the two backups diffed by domain path, and after a password change and
    a full re-encrypted backup, one snapshot exported as sent and the new one with --decrypt: the phone's plain files."""
    from phonevault.sync.emulator import Emulator

    with Emulator(tmp_path / "phone", seed=SEED, size=SIZE) as phone:
        env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=phone.address)
        pv("init", check=True)
        pv("device", "encryption", "on", env=dict(env, PHONEVAULT_NEW_BACKUP_PASSWORD="first"), check=True)
        pv("backup", env=env, check=True)
        phone.set_day(1)
        pv("backup", env=env, check=True)
        day1 = {p.name: p.read_bytes() for p in phone.device_dir.glob("??/*") if p.is_file()}
        s0, s1 = (s["id"][:8] for s in js(pv("snapshots", "--json", env=env)))
        first = dict(env, PHONEVAULT_BACKUP_PASSWORD="first")

        listing = js(pv("ls", s1, DCIM, "--json", env=first))
        photo = next(x for x in listing if x["type"] == "file" and x["name"].endswith((".JPG", ".HEIC")))
        pv("extract", s1, photo["path"], "--to", str(tmp_path / "x"), env=first, check=True)
        assert (tmp_path / "x" / photo["path"]).read_bytes() == day1[photo["file_id"]]

        # The plain twin of the same two days, in a vault of its own, diffs the same by domain path.
        twin_env = dict(cli_env, PHONEVAULT_REPO=str(tmp_path / "tv"), PHONEVAULT_CACHE_DIR=str(tmp_path / "tc"))
        twin = SyntheticPhone(SEED, SIZE)
        t = imported(pv, twin_env, *(twin.write_backup(tmp_path / f"twin{d}", d) for d in (0, 1)))
        mine = js(pv("diff", s0, s1, "--json", env=first))["changes"]
        theirs = js(pv("diff", t[0]["id"][:8], t[1]["id"][:8], "--json", env=twin_env))["changes"]
        assert [c for c in mine if "Domain" in c["path"]] == [c for c in theirs if "Domain" in c["path"]]
        assert any(c["path"].startswith("CameraRollDomain/") for c in mine)

        again = dict(env, PHONEVAULT_BACKUP_PASSWORD="first", PHONEVAULT_NEW_BACKUP_PASSWORD="second")
        pv("device", "password", env=again, check=True)
        pv("backup", env=env, check=True)  # full: every file re-encrypted under the new keybag
        s2 = js(pv("snapshots", "--json", env=env))[-1]["id"][:8]
        assert one_line(pv("ls", s2, env=first), 12)  # the new backup needs the new password
        # A diff across the change takes both passwords; the same day's files, re-encrypted, are not modified.
        assert "wrong backup password" in one_line(pv("diff", s1, s2, env=first), 12)
        both = ["--backup-password", "second", "--backup-password", "first"]
        across = js(pv("diff", s1, s2, *both, "--json", env=env))["changes"]
        assert [c for c in across if "Domain" in c["path"]] == []
        shown = js(pv("diff", s1, s2, *both, "--metadata", "--json", env=env))["changes"]
        assert {c["change"] for c in shown if c["path"].startswith(DCIM)} == {"metadata"}

        pv("export", s1, "--to", str(tmp_path / "sent"), env=env, check=True)
        sent = tmp_path / "sent" / phone.udid
        assert plistlib.loads((sent / "Manifest.plist").read_bytes())["IsEncrypted"] is True
        assert (sent / "Manifest.db").read_bytes()[:16] != b"SQLite format 3\x00"
        pv("export", s2, "--decrypt", "--to", str(tmp_path / "plain"), env=dict(env, PHONEVAULT_BACKUP_PASSWORD="second"),
           check=True)  # fmt: skip
        plain = tmp_path / "plain" / phone.udid
        assert {p.name: p.read_bytes() for p in plain.glob("??/*") if p.is_file()} == day1
        with sqlite3.connect(f"file:{plain / 'Manifest.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT fileID, file FROM Files WHERE flags = 1").fetchall()
        assert {fid for fid, _ in rows} == set(day1)
        assert not any("EncryptionKey" in decode_mbfile(blob) for _, blob in rows)
        assert plistlib.loads((plain / "Manifest.plist").read_bytes())["IsEncrypted"] is False
