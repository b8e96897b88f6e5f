"""A hostile device end to end: `backup_device` against the emulator in hostile mode (`Fault(hostile=...)`,
sync/emulator/hostile.py), through real usbmuxd framing, lockdownd with its TLS session, DeviceLink and
MobileBackup2, into a real vault.

tests/sync/test_hostile_devicelink.py drives `VaultDeviceLink` alone over a socket pair; these tests go through the
whole client stack (pymobiledevice3 included), where a hang or an untyped error would really reach a user.

For every behaviour: the backup ends in the expected typed `DeviceError` of one line, within a deadline (a backup
still running after DEADLINE seconds is a hang, and fails the test: no timing assertion beyond that); the snapshot
stored before it is untouched and nothing new is committed (`check --read-data` is clean, no writers/ marker is
left); and the next backup of the well-behaved phone works and builds on that snapshot (the device's sync lock was
released, the vault was not harmed). The absurd-length behaviours also run in a child process whose data segment is
capped at 1 GiB: the host must refuse them without allocating what they claim. A restore meets the silences and a
few malformed answers the same way, and finding devices through a hostile usbmuxd finds none, in bounded time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

import pytest

from phonevault.store.check import check
from phonevault.sync.backup2 import Timeouts, backup_device, find_devices
from phonevault.sync.emulator import Emulator, Fault
from phonevault.sync.emulator.hostile import BEHAVIOURS
from phonevault.sync.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceLimitExceeded,
    DeviceTimeout,
    ProtocolError,
)
from phonevault.sync.restore import restore_device
from tests.conftest import FAST_SCRYPT, PASSWORD

SIZE = 256 << 10
DEADLINE = 90.0
ANSWERS = Timeouts(setup=60, idle=60, cleanup=10)  # the device answers (wrongly): its answer must end the backup
SILENCE = Timeouts(setup=2, idle=2, cleanup=2)  # the device says nothing: the host's own bound must end it

# behaviour -> (the error, a fragment of its one line)
EXPECTED: dict[str, tuple[type[DeviceError], str]] = {
    "usbmux-silent": (DeviceTimeout, "while connecting to usbmuxd and lockdownd"),
    "usbmux-garbage": (ProtocolError, "usbmuxd: refusing a reply of"),
    "usbmux-absurd-length": (ProtocolError, "usbmuxd: refusing a reply of 4294967280 bytes"),
    "usbmux-truncated": (ProtocolError, "usbmuxd closed the connection"),
    "usbmux-wrong-types": (ProtocolError, "malformed or refused reply"),
    "usbmux-device-list-not-a-list": (ProtocolError, "malformed or refused reply"),
    "lockdown-silent": (DeviceTimeout, "while connecting to usbmuxd and lockdownd"),
    "lockdown-garbage": (ProtocolError, "not a valid plist"),
    "lockdown-absurd-length": (ProtocolError, "4294967280-byte message"),
    "lockdown-truncated": (ProtocolError, "terminated"),
    "lockdown-not-a-dict": (ProtocolError, "malformed or refused reply"),
    "lockdown-bad-tls": (DeviceError, "TLS handshake failed"),
    "lockdown-tls-silent": (DeviceTimeout, "while connecting to usbmuxd and lockdownd"),
    "lockdown-wrong-types": (ProtocolError, "malformed or refused reply"),
    "lockdown-udid-traversal": (ProtocolError, "cannot name a folder"),
    "lockdown-udid-not-a-string": (ProtocolError, "cannot name a folder"),
    "dl-silent-handshake": (DeviceTimeout, "while starting MobileBackup2"),
    "dl-version-wrong-types": (ProtocolError, "DLMessageVersionExchange: argument 1"),
    "dl-hello-wrong-types": (ProtocolError, "integer ErrorCode"),
    "dl-hello-no-error-code": (ProtocolError, "integer ErrorCode"),
    "dl-silent-after-backup": (DeviceTimeout, "while backing up"),
    "dl-stall-mid-frame": (DeviceTimeout, "while backing up"),
    "dl-truncated-frame": (DeviceDisconnected, "disconnected"),
    "dl-disconnect-mid-file": (DeviceDisconnected, "disconnected"),
    "dl-absurd-plist-length": (ProtocolError, "4294967295-byte message"),
    "dl-absurd-name-length": (ProtocolError, "file name length 2147483648 is absurd"),
    "dl-absurd-block-length": (ProtocolError, "file block length 2147483648 is invalid"),
    "dl-garbage-plist": (ProtocolError, "not a valid plist"),
    "dl-message-not-an-array": (ProtocolError, "expected a message array"),
    "dl-unknown-message": (ProtocolError, "unknown message DLMessageSelfDestruct"),
    "dl-message-name-not-a-string": (ProtocolError, "expected a message array"),
    "dl-disconnect-message": (DeviceDisconnected, "DLMessageDisconnect"),
    "dl-create-directory-dict": (ProtocolError, "DLMessageCreateDirectory: argument 1"),
    "dl-move-items-array": (ProtocolError, "DLMessageMoveItems: argument 1"),
    "dl-move-items-dict-values": (ProtocolError, "DLMessageMoveItems: argument 1"),
    "dl-remove-items-int": (ProtocolError, "DLMessageRemoveItems: argument 1"),
    "dl-remove-items-dicts": (ProtocolError, "DLMessageRemoveItems: argument 1"),
    "dl-copy-item-array": (ProtocolError, "DLMessageCopyItem: argument 1"),
    "dl-download-files-dict": (ProtocolError, "DLMessageDownloadFiles: argument 1"),
    "dl-download-files-ints": (ProtocolError, "DLMessageDownloadFiles: argument 1"),
    "dl-contents-of-directory-int": (ProtocolError, "DLContentsOfDirectory: argument 1"),
    "dl-upload-files-short": (ProtocolError, "DLMessageUploadFiles has 0 argument(s)"),
    "dl-move-items-short": (ProtocolError, "DLMessageMoveItems has 0 argument(s)"),
    "dl-final-not-a-dict": (ProtocolError, "integer ErrorCode"),
    "dl-final-error-code-string": (ProtocolError, "integer ErrorCode"),
    "dl-final-error-code-missing": (ProtocolError, "integer ErrorCode"),
    "dl-traversal-upload": (ProtocolError, "climbs out of the backup folder"),
    "dl-traversal-upload-absolute": (ProtocolError, "not relative to the backup folder"),
    "dl-traversal-other-device": (ProtocolError, "outside this device's backup folder"),
    "dl-traversal-mkdir": (ProtocolError, "climbs out of the backup folder"),
    "dl-traversal-move": (ProtocolError, "climbs out of the backup folder"),
    "dl-traversal-copy": (ProtocolError, "not relative to the backup folder"),
    "dl-traversal-remove": (ProtocolError, "climbs out of the backup folder"),
    "dl-traversal-download": (ProtocolError, "climbs out of the backup folder"),
    "dl-traversal-contents": (ProtocolError, "not relative to the backup folder"),
    "dl-traversal-nul": (ProtocolError, "not relative to the backup folder"),
    "dl-copy-flood": (DeviceLimitExceeded, "CopyItem"),
}
SILENT = {n for n, (error, _) in EXPECTED.items() if error is DeviceTimeout}
ABSURD = ["usbmux-absurd-length", "usbmux-garbage", "lockdown-absurd-length", "dl-absurd-plist-length",
          "dl-absurd-name-length", "dl-absurd-block-length"]  # fmt: skip


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    with Emulator(tmp_path_factory.mktemp("hostile-emulator"), seed=13, size=SIZE) as e:
        yield e


def within_deadline(call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a thread; what it raised (None if it returned). A call still running at DEADLINE is a hang."""
    outcome: dict[str, BaseException | None] = {"error": None}
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="backup-under-test", daemon=True).start()
    assert done.wait(DEADLINE), f"the host was still waiting on the device after {DEADLINE:g} s"
    return outcome["error"]


def snapshot_count(repo) -> int:
    return sum(len(v.snapshots) for v in repo.devices())


def test_every_behaviour_has_an_expected_outcome():
    assert set(EXPECTED) == set(BEHAVIOURS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_hostile_device_ends_the_backup_in_one_typed_line_and_harms_nothing(repo, emu, name):
    emu.fault = None
    first = backup_device(repo, usbmux_address=emu.address, timeouts=ANSWERS)
    emu.fault = Fault(hostile=name)
    try:
        timeouts = SILENCE if name in SILENT else ANSWERS
        error = within_deadline(lambda: backup_device(repo, usbmux_address=emu.address, timeouts=timeouts))
    finally:
        emu.fault = None
    kind, text = EXPECTED[name]
    assert type(error) is kind, f"{name}: {type(error).__name__}: {error}"
    assert text in str(error) and "\n" not in str(error), str(error)
    assert snapshot_count(repo) == 1
    assert [n for n, _ in repo.backend.list("writers/")] == []
    report = check(repo, read_data=True)
    assert report.ok, report.errors
    again = backup_device(repo, usbmux_address=emu.address, timeouts=ANSWERS)  # the sync lock was released
    assert again.snapshot.parent == first.snapshot.id


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        bytearray(4 << 30)
        bites = False
    except MemoryError:
        bites = True  # the cap is real: a reader that allocated a claimed 4 GiB would fail the same way
    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.errors import PhonevaultError
    from phonevault.store.repository import Repository
    from phonevault.sync.backup2 import Timeouts, backup_device, find_devices
    from phonevault.sync.restore import restore_device
    where, address, password, scrypt_n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    repo = Repository.init(LocalBackend(where / "vault"), password, scrypt_n=scrypt_n, cache_root=where / "cache")
    try:
        backup_device(repo, usbmux_address=address, timeouts=Timeouts(setup=60, idle=60, cleanup=10))
        out = {"type": None, "message": ""}
    except PhonevaultError as e:
        out = {"type": type(e).__name__, "message": str(e)}
    except MemoryError as e:
        out = {"type": "MemoryError", "message": str(e)}
    print(json.dumps(dict(out, bites=bites)))
    """
)


@pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform != "linux", reason="RLIMIT_DATA caps anonymous mmaps on Linux"
)
@pytest.mark.parametrize("name", ABSURD)
def test_absurd_lengths_are_refused_without_allocating_them(emu, tmp_path, name):
    """RLIMIT_DATA, not RLIMIT_AS: the LMDB cache maps 64 GiB of address space it never touches."""
    emu.fault = Fault(hostile=name)
    try:
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path), emu.address, PASSWORD, str(FAST_SCRYPT)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    finally:
        emu.fault = None
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bites"], "the 1 GiB cap did not stop a 4 GiB allocation: this test would prove nothing"
    kind, text = EXPECTED[name]
    assert out["type"] == kind.__name__ and text in out["message"], out


RESTORE_EXPECTED: dict[str, tuple[type[DeviceError], str]] = {
    "usbmux-silent": (DeviceTimeout, "while connecting to usbmuxd and lockdownd"),
    "lockdown-bad-tls": (DeviceError, "TLS handshake failed"),
    "dl-silent-handshake": (DeviceTimeout, "while starting MobileBackup2"),
    "dl-silent-after-backup": (DeviceTimeout, "while restoring"),
    "dl-stall-mid-frame": (DeviceTimeout, "while restoring"),
    "dl-absurd-plist-length": (ProtocolError, "4294967295-byte message"),
    "dl-unknown-message": (ProtocolError, "unknown message DLMessageSelfDestruct"),
    "dl-traversal-download": (ProtocolError, "climbs out of the backup folder"),
}


@pytest.mark.parametrize("name", sorted(RESTORE_EXPECTED))
def test_a_hostile_device_ends_a_restore_in_one_typed_line(repo, emu, name):
    emu.fault = None
    snap = backup_device(repo, usbmux_address=emu.address, timeouts=ANSWERS).snapshot
    view = repo.devices()[0]
    emu.fault = Fault(hostile=name)
    try:
        timeouts = SILENCE if RESTORE_EXPECTED[name][0] is DeviceTimeout else ANSWERS
        error = within_deadline(lambda: restore_device(repo, view, snap, usbmux_address=emu.address, timeouts=timeouts))
    finally:
        emu.fault = None
    kind, text = RESTORE_EXPECTED[name]
    assert type(error) is kind, f"{name}: {type(error).__name__}: {error}"
    assert text in str(error) and "\n" not in str(error), str(error)
    assert [a.kind for a in repo.devices()[0].audit if a.kind == "restored"] == []
    assert check(repo, read_data=True).ok


@pytest.mark.parametrize("name", ["usbmux-silent", "usbmux-garbage", "usbmux-wrong-types"])
def test_finding_devices_through_a_hostile_usbmuxd_finds_none_in_bounded_time(emu, name):
    emu.fault = Fault(hostile=name)
    found: list[list[str]] = []
    try:
        error = within_deadline(lambda: found.append(find_devices(emu.address, timeouts=SILENCE)))
    finally:
        emu.fault = None
    assert error is None and found == [[]]
    assert find_devices(emu.address) == [emu.udid]
