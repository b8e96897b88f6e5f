"""Nothing private lands on disk in plaintext: after a folder import, a device backup and a killed `ls`, every byte
of the vault, the local cache and $TMPDIR is scanned for the phone's identity (UDID, serial, IMEI, phone number,
ICCID, device name), its file names and fileIDs, its domain names, the source folder's path and known file contents.

The killed `ls` is stopped deterministically at the moment it starts to parse the snapshot's catalog (a Python audit
hook in the child reports `sqlite3.connect` and waits), which is where a Manifest.db used to be written to $TMPDIR.
"""

from __future__ import annotations

import plistlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from phonevault.sync.emulator import Emulator

PAUSE_AT_CATALOG = r"""
import sys, time
def hook(event, args):
    if event in ("sqlite3.connect", "phonevault.sealed_sqlite.open"):
        sys.stderr.write("PAUSED-IN-CATALOG\n"); sys.stderr.flush()
        time.sleep(600)
sys.addaudithook(hook)
from phonevault.cli.main import main
sys.argv = ["phonevault", *sys.argv[1:]]
main()
"""


def needles(device_dir: Path) -> dict[str, bytes]:
    """What must never appear in plaintext, by what it is."""
    info = plistlib.loads((device_dir / "Info.plist").read_bytes())
    found: dict[str, bytes] = {}
    for key in ("Unique Identifier", "Serial Number", "IMEI", "Phone Number", "ICCID", "Device Name", "MEID"):
        if value := info.get(key):
            found[key] = str(value).encode()
    found["source folder"] = str(device_dir).encode()
    with sqlite3.connect(f"file:{device_dir / 'Manifest.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT fileID, domain, relativePath FROM Files WHERE flags = 1 ORDER BY fileID").fetchall()
    domains = sorted({d for _f, d, _p in rows})
    for d in domains[:5]:
        found[f"domain {d}"] = d.encode()
    for file_id, _domain, rel in rows[:: max(1, len(rows) // 8)][:8]:
        found[f"file name {rel}"] = rel.rsplit("/", 1)[-1].encode()
        found[f"fileID {file_id}"] = file_id.encode()
        content = (device_dir / file_id[:2] / file_id).read_bytes()
        if len(content) >= 4096:  # a 32-byte slice from the middle of the file
            found[f"content of {rel}"] = content[len(content) // 2 : len(content) // 2 + 32]
    return {k: v for k, v in found.items() if len(v) >= 6}  # shorter strings occur by chance in random bytes


def scan(roots: list[Path], wanted: dict[str, bytes]) -> list[str]:
    hits = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                hits += [f"{what} in {p}" for what, needle in wanted.items() if needle in data]
                hits += [f"{what} in the name {p}" for what, needle in wanted.items() if needle in str(p).encode()]
    return hits


def test_nothing_private_in_plaintext_on_disk(cli_env, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    vault, cache = Path(cli_env["PHONEVAULT_REPO"]), Path(cli_env["PHONEVAULT_CACHE_DIR"])
    exe = str(Path(sys.executable).with_name("phonevault"))
    with Emulator(tmp_path / "emulator", seed=71, size=6 << 20) as emu:
        env = dict(cli_env, TMPDIR=str(tmpdir), USBMUXD_SOCKET_ADDRESS=emu.address)

        def pv(*args):
            r = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
            assert r.returncode == 0, (args, r.stderr)
            return r

        pv("init")
        pv("import", str(emu.device_dir))
        emu.set_day(1)
        pv("backup")
        wanted = needles(emu.device_dir)
        assert len(wanted) >= 15, wanted  # identity, names, ids and contents are all looked for
        pv("ls", "latest")  # the catalog through a warm cache
        assert scan([vault, cache, tmpdir], wanted) == []

        for d in cache.iterdir():  # a cold cache: the next `ls` must parse the Manifest.db again
            subprocess.run(["rm", "-rf", str(d)], check=True)
        p = subprocess.Popen(
            [sys.executable, "-c", PAUSE_AT_CATALOG, "ls", "latest"], env=env, stderr=subprocess.PIPE, text=True
        )
        for line in p.stderr:
            if "PAUSED-IN-CATALOG" in line:
                break
        else:
            pytest.fail(f"ls never parsed a catalog (exit {p.wait()})")
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
        assert scan([vault, cache, tmpdir], wanted) == []
        assert [x for x in tmpdir.rglob("*")] == []  # not even sealed leftovers

    # And the modes: nobody else on the machine may read the vault or the cache at all.
    for root in (vault, cache):
        for p in [root, *root.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
