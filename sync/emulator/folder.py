"""The MobileSync backup folder a host holds after backing a synthetic phone up on day N.

Layout (`root/<udid>/`): `<fileID[:2]>/<fileID>` per regular file (encrypted when the phone has a password; mtime =
the file's), all 256 shard directories even when empty, Manifest.db (encrypted with the ManifestKey's key when the
phone has a password), Manifest.plist, Status.plist and Info.plist, the four stamped with the backup's time.

Invariant: writing day N over any earlier folder of the same phone gives the same bytes and mtimes as writing it
fresh. A file already there with the expected size and mtime is kept — sound because a file's mtime changes with
its bytes — unless the folder's keybag is another phone's (another seed or password: other keys, other bytes).
An interrupted write leaves a wrong mtime behind (mtime is set last), so the next run redoes that file.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phonevault.sync.ioscrypto import encrypt
from phonevault.sync.manifest import FLAG_FILE, write_manifest_db
from phonevault.sync.plists import info_plist_bytes

from .content import read_pieces
from .days import PhoneFile
from .seeds import BUNDLES, backup_time, derive, plist_date

if TYPE_CHECKING:
    from .phone import SyntheticPhone

_WRITERS = 4


def info_plist(phone: SyntheticPhone) -> bytes:
    return info_plist_bytes(
        phone.lockdown_values(),
        guid=derive(phone.seed, "guid")[:16],
        installed_applications=BUNDLES,
        applications={
            b: {"iTunesMetadata": plistlib.dumps({"softwareVersionBundleId": b}), "ApplicationSINF": derive(b)}
            for b in BUNDLES
        },
        itunes_files={"iTunesPrefs": derive(phone.seed, "prefs") * 8, "IC-Info.sidv": derive(phone.seed, "sidv")},
    )


def manifest_plist(phone: SyntheticPhone, day: int) -> bytes:
    v = phone.lockdown_values()
    lockdown_keys = ("BuildVersion", "DeviceName", "ProductType", "ProductVersion", "SerialNumber", "UniqueDeviceID")
    d: dict[str, Any] = {
        "BackupKeyBag": phone.keybag(),
        "Version": "10.0",
        "Date": plist_date(backup_time(day)),
        "SystemDomainsVersion": "24.0",
        "WasPasscodeSet": True,
        "IsEncrypted": phone.password is not None,
        "Lockdown": {k: v[k] for k in lockdown_keys}
        | {"com.apple.MobileDeviceCrashCopy": {}, "com.apple.TerminalFlashr": {}, "com.apple.mobile.data_sync": {}},
        "Applications": {
            b: {
                "CFBundleIdentifier": b,
                "CFBundleVersion": f"{derive(b)[0] % 20}.{derive(b)[1] % 10}",
                "ContainerContentClass": "Data/Application",
                "Path": f"/private/var/containers/Bundle/Application/{uuid.UUID(bytes=derive(phone.seed, b)[:16])}".upper()
                + "/App.app",
            }
            for b in BUNDLES
        },
    }
    if phone.password is not None:
        d["ManifestKey"] = phone.manifest_key()
    return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)


def status_plist(phone: SyntheticPhone, day: int, version: str = "3.3") -> bytes:
    d = {
        "BackupState": "new",
        "Date": plist_date(backup_time(day)),
        "IsFullBackup": day == 0,
        "SnapshotState": "finished",
        "UUID": str(uuid.UUID(bytes=derive(phone.seed, "status", day)[:16])).upper(),
        "Version": version,
    }
    return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)


def write_manifest(phone: SyntheticPhone, path: Path, files: list[PhoneFile]) -> None:
    """Manifest.db of ``files`` at ``path`` (encrypted with the ManifestKey when the phone has a password)."""
    extra = {f.entry.file_id: {"EncryptionKey": phone.encryption_key(f)} for f in files if f.entry.has_encryption_key}
    if phone.password is None:
        write_manifest_db(path, (f.entry for f in files), extra)
        return
    plain = Path(path).with_name(Path(path).name + ".plain")
    write_manifest_db(plain, (f.entry for f in files), extra)
    with open(path, "wb") as out:
        for piece in encrypt(phone.manifest_db_key(), read_pieces(plain)):
            out.write(piece)
    plain.unlink()


def write_backup(phone: SyntheticPhone, root: Path, day: int) -> Path:
    """Make ``root/<udid>/`` the folder after ``phone``'s backup on ``day``, incrementally; returns it."""
    dest = Path(root) / phone.udid
    dest.mkdir(parents=True, exist_ok=True)
    files = phone.files(day)
    manifest = manifest_plist(phone, day)
    old = dest / "Manifest.plist"
    try:
        trust_stat = plistlib.loads(old.read_bytes()).get("BackupKeyBag") == phone.keybag()
    except Exception:  # missing or damaged: rewrite everything
        trust_stat = False
    wanted = {f.entry.file_id: f for f in files if f.entry.flags == FLAG_FILE}
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
            and st.st_size == phone.backup_size(f)
            and st.st_mtime_ns == f.entry.mtime * 10**9
        )
    ]

    def write(share: list[PhoneFile]) -> None:
        for f in share:
            # Written in place, mtime last: an interrupted write leaves a wrong mtime, so the next run redoes it.
            target = dest / f.entry.file_id[:2] / f.entry.file_id
            with open(target, "wb") as out:
                for piece in phone.backup_stream(f):
                    out.write(piece)
            os.utime(target, ns=(f.entry.mtime * 10**9, f.entry.mtime * 10**9))

    # Creating files is syscall-bound (~100 µs each on a loaded VM); threads overlap it. Each file is
    # independent, so the order of writing does not affect the result.
    with ThreadPoolExecutor(_WRITERS) as pool:
        list(pool.map(write, [todo[i::_WRITERS] for i in range(_WRITERS)]))
    stamp = backup_time(day) * 10**9
    write_manifest(phone, dest / "Manifest.db", files)
    for name, data in (
        ("Manifest.plist", manifest),
        ("Status.plist", status_plist(phone, day)),
        ("Info.plist", info_plist(phone)),
    ):
        (dest / name).write_bytes(data)
    for name in ("Manifest.db", "Manifest.plist", "Status.plist", "Info.plist"):
        os.utime(dest / name, ns=(stamp, stamp))
    return dest
