"""Bad targets and a full disk, as a user meets them: one line on stderr, a non-zero exit, nothing half-made."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.cli.test_cli import one_error_line
from tests.sync.test_mobilesync import tree_digest


def test_init_on_a_file_is_one_line(pv, cli_env, tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a vault")
    one_error_line(pv("init", "--repo", str(f)), 1, "is a file")
    assert f.read_text() == "not a vault"


@pytest.mark.parametrize("password", ["", "   "])
def test_init_refuses_an_empty_password(pv, cli_env, tmp_path, password):
    target = tmp_path / "v"
    one_error_line(pv("init", "--repo", str(target), env=dict(cli_env, PHONEVAULT_PASSWORD=password)), 1, "empty")
    assert not target.exists()


def test_key_add_refuses_an_empty_password(pv, cli_env):
    pv("init", check=True)
    one_error_line(pv("key", "add", env=dict(cli_env, PHONEVAULT_NEW_PASSWORD=" ")), 1, "empty")
    assert len(json.loads(pv("key", "list", "--json", check=True).stdout)) == 1


def _in_own_mount_namespace() -> list[str]:
    """A private mount namespace for a tmpfs the test can fill: as root directly, else as a mapped root user."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed for the disk-full test")
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


DISK_FULL = r"""
set -u
mount -t tmpfs -o size=30m tmpfs "$DISK"
export PHONEVAULT_REPO="$DISK/vault" PHONEVAULT_CACHE_DIR="$DISK/cache"
run() { name=$1; shift; "$PV" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; echo $? >"$OUT/$name.rc"; }
run init init
run small import "$SMALL"
run big import "$BIG"
find "$DISK/vault" -name '.tmp-*' >"$OUT/leftovers"
run check check --read-data --json
run snaps snapshots --json
run export export latest --to "$OUT/export"
"""


def test_disk_full_is_one_line_and_loses_nothing(cli_env, tmp_path):
    """A 30 MB disk holding vault and cache: an 8 MB import fits, a 48 MB one does not. The failing import says so
    in one line, leaves no temporary files, and the vault still checks clean and exports the first snapshot."""
    small = SyntheticPhone(seed=51, size=8 << 20).write_backup(tmp_path / "small", day=0)
    big = SyntheticPhone(seed=52, size=48 << 20).write_backup(tmp_path / "big", day=0)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "disk").mkdir()
    env = dict(
        cli_env,
        DISK=str(tmp_path / "disk"),
        OUT=str(out),
        SMALL=str(small),
        BIG=str(big),
        PV=str(Path(sys.executable).with_name("phonevault")),
    )
    subprocess.run([*_in_own_mount_namespace(), "bash", "-c", DISK_FULL], env=env, check=True)

    def result(name):
        return subprocess.CompletedProcess(
            name,
            int((out / f"{name}.rc").read_text()),
            (out / f"{name}.out").read_text(),
            (out / f"{name}.err").read_text(),
        )

    for ok in ("init", "small", "check", "snaps", "export"):
        assert result(ok).returncode == 0, (ok, result(ok).stderr)
    one_error_line(result("big"), 1, "No space left on device")
    errors = [ln for ln in result("big").stderr.splitlines() if not re.match(r"importing \S+: \d+ % ", ln)]
    assert len(errors) == 1, result("big").stderr
    assert (out / "leftovers").read_text() == ""
    assert json.loads(result("check").stdout)["ok"]
    assert len(json.loads(result("snaps").stdout)) == 1
    assert tree_digest(next((out / "export").iterdir())) == tree_digest(small)


DEVICE_DISK_FULL = r"""
set -u
mount -t tmpfs -o size=16m tmpfs "$DISK"
export PHONEVAULT_REPO="$DISK/vault" PHONEVAULT_CACHE_DIR="$DISK/cache"
"$PV" init >/dev/null 2>&1
"$PV" backup >"$OUT/backup.out" 2>"$OUT/backup.err"; echo $? >"$OUT/backup.rc"
"""


def test_a_backup_the_device_refuses_for_a_full_disk_is_one_line(cli_env, tmp_path):
    """A phone wants its upload plus 128 MiB free on the host before it backs up; on a 16 MiB disk it refuses
    (MBErrorDomain 105). The user reads one line saying so, after the line that says the backup started."""
    from phonevault.sync.emulator import Emulator

    out, disk = tmp_path / "out", tmp_path / "disk"
    out.mkdir()
    disk.mkdir()
    with Emulator(tmp_path / "emulator", seed=54, size=4 << 20) as emu:
        env = dict(
            cli_env, DISK=str(disk), OUT=str(out), PV=str(Path(sys.executable).with_name("phonevault")),
            USBMUXD_SOCKET_ADDRESS=emu.address,
        )  # fmt: skip
        subprocess.run([*_in_own_mount_namespace(), "bash", "-c", DEVICE_DISK_FULL], env=env, check=True)
    err = (out / "backup.err").read_text()
    assert int((out / "backup.rc").read_text()) == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("backing up ")]
    assert len(lines) == 1 and lines[0].startswith("phonevault: ") and "free" in lines[0], err
