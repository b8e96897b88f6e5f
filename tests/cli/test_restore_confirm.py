"""`restore` says what it will put on which device and asks first; another device's backup gets a clear warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonevault.sync.emulator import Emulator
from tests.sync.test_mobilesync import tree_digest


@pytest.fixture
def two_phones(tmp_path: Path):
    with Emulator(tmp_path / "a", seed=81, size=2 << 20) as a, Emulator(tmp_path / "b", seed=82, size=2 << 20) as b:
        yield a, b


def test_restore_asks_first_and_warns_across_devices(pv, cli_env, two_phones):
    a, b = two_phones
    on_a, on_b = dict(cli_env, USBMUXD_SOCKET_ADDRESS=a.address), dict(cli_env, USBMUXD_SOCKET_ADDRESS=b.address)
    pv("init", check=True)
    pv("backup", env=on_a, check=True)
    a.set_day(1)
    before = tree_digest(a.device_dir)

    r = pv("restore", "latest", env=on_a)  # no terminal to ask on, no --yes: nothing happens
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"→ device {a.udid}" in r.stderr and "give --yes" in r.stderr.splitlines()[-1]
    assert tree_digest(a.device_dir) == before

    r = pv("restore", "latest", "--no-reboot", "--yes", env=on_a, check=True)
    assert "warning" not in r.stderr and tree_digest(a.device_dir) != before
    assert "restoring: 50 %" in r.stderr  # progress, one line per 10 % on a non-terminal

    b_before = tree_digest(b.device_dir)
    r = pv("restore", "latest", "--no-reboot", "--yes", env=on_b)  # a's backup onto b: allowed, with a warning
    assert "backup of another device" in r.stderr and b.udid in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert tree_digest(b.device_dir) != b_before
