"""The device emulator against the unmodified third-party client, pymobiledevice3, run as a subprocess.

Real parts only: a started Emulator on a free loopback port, the phone from the project's SyntheticPhone, and
`pymobiledevice3 backup2 …` with nothing but USBMUXD_SOCKET_ADDRESS (and an empty HOME) pointing it at us.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from phonevault.sync.emulator import Emulator, Fault
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.manifest import FLAG_FILE, read_manifest_rows

PMD3 = Path(sys.executable).with_name("pymobiledevice3")
SIZE = 12 * 2**20
INFO_KEYS = ("Target Identifier", "Unique Identifier", "Serial Number", "Product Version", "Product Type",
             "Device Name", "Build Version")  # fmt: skip


@pytest.fixture
def emulator(tmp_path: Path):
    with Emulator(tmp_path / "emulator", seed=3, size=SIZE) as emu:
        yield emu


@pytest.fixture(scope="module")
def idle_emulator(tmp_path_factory: pytest.TempPathFactory):
    """One emulator for the tests that only talk raw usbmux/lockdownd and change nothing."""
    with Emulator(tmp_path_factory.mktemp("idle") / "emulator", seed=3, size=SIZE) as emu:
        yield emu


def pmd3(emu: Emulator, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "USBMUXD_SOCKET_ADDRESS": emu.address}
    return subprocess.run(
        [str(PMD3), *args], env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"pymobiledevice3 failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def files_of(folder: Path) -> dict[str, str]:
    """relative path → sha256 of every file in a backup folder except the host-written Info.plist."""
    return {
        p.relative_to(folder).as_posix(): digest(p) for p in folder.rglob("*") if p.is_file() and p.name != "Info.plist"
    }


def catalog(folder: Path) -> dict[str, tuple]:
    return {entry.file_id: (entry, mbfile) for entry, mbfile in read_manifest_rows(folder / "Manifest.db")}


def assert_same_backup(host: Path, device: Path) -> None:
    assert catalog(host) == catalog(device)
    assert files_of(host) == files_of(device)
    host_info = plistlib.loads((host / "Info.plist").read_bytes())
    device_info = plistlib.loads((device / "Info.plist").read_bytes())
    assert {k: host_info[k] for k in INFO_KEYS} == {k: device_info[k] for k in INFO_KEYS}


# --------------------------------------------------------------------------------------------------- backup


def test_full_backup_by_unmodified_pymobiledevice3(emulator: Emulator, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    ok(pmd3(emulator, tmp_path / "home", "backup2", "backup", "--full", str(backups)))

    host = backups / emulator.udid
    assert_same_backup(host, emulator.device_dir)
    assert not (host / "Snapshot").exists()
    assert plistlib.loads((host / "Status.plist").read_bytes())["SnapshotState"] == "finished"
    report = emulator.reports[-1]
    assert (report.operation, report.kind, report.error_code) == ("Backup", "full", 0)
    data_files = [e for e, _ in catalog(emulator.device_dir).values() if e.flags == FLAG_FILE]
    assert len(report.uploaded) == len(data_files) > 100


def test_incremental_backup_uploads_only_what_changed(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    ok(pmd3(emulator, home, "backup2", "backup", "--full", str(backups)))
    day0 = catalog(emulator.device_dir)

    emulator.set_day(1)
    day1 = catalog(emulator.device_dir)
    ok(pmd3(emulator, home, "backup2", "backup", str(backups)))

    assert_same_backup(backups / emulator.udid, emulator.device_dir)
    report = emulator.reports[-1]
    assert report.kind == "incremental"
    files0 = {fid for fid, (e, _) in day0.items() if e.flags == FLAG_FILE}
    files1 = {fid for fid, (e, _) in day1.items() if e.flags == FLAG_FILE}
    changed = {fid for fid in files1 if day0.get(fid) != day1[fid]}
    assert set(report.uploaded) == changed
    assert set(report.removed) == files0 - files1
    assert 0 < len(changed) < len(files1) // 2


def test_second_backup_of_an_unchanged_phone_uploads_no_data_files(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    ok(pmd3(emulator, home, "backup2", "backup", str(backups)))  # empty folder: pmd3 and the device go full
    assert emulator.reports[-1].kind == "full"
    ok(pmd3(emulator, home, "backup2", "backup", str(backups)))
    assert (emulator.reports[-1].kind, emulator.reports[-1].uploaded) == ("incremental", ())
    assert_same_backup(backups / emulator.udid, emulator.device_dir)


# --------------------------------------------------------------------------------------------------- restore


def test_restore_of_day0_backup_makes_the_phone_day0_again(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    ok(pmd3(emulator, home, "backup2", "backup", "--full", str(backups)))
    emulator.set_day(1)
    assert files_of(emulator.device_dir) != files_of(backups / emulator.udid)

    # CLI defaults: --reboot, --no-copy, --settings, --no-system, --no-remove; the source defaults to our UDID.
    ok(pmd3(emulator, home, "backup2", "restore", "--no-reboot", "--source", emulator.udid, str(backups)))

    assert_same_backup(backups / emulator.udid, emulator.device_dir)
    report = emulator.reports[-1]
    assert (report.operation, report.error_code) == ("Restore", 0)
    assert report.received == len([1 for e, _ in catalog(emulator.device_dir).values() if e.flags == FLAG_FILE])


def test_failed_restore_leaves_the_phone_unchanged(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    ok(pmd3(emulator, home, "backup2", "backup", str(backups)))
    emulator.set_day(1)
    before = files_of(emulator.device_dir)
    host = backups / emulator.udid
    victim = next(p for p in host.glob("??/*") if p.is_file())
    victim.unlink()

    result = pmd3(emulator, home, "backup2", "restore", "--no-reboot", str(backups))

    assert result.returncode != 0
    assert files_of(emulator.device_dir) == before
    assert emulator.reports[-1].error_code == 4


# --------------------------------------------------------------------------------------------------- faults


def test_disconnect_mid_upload_fails_the_client_and_the_emulator_stays_up(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    emulator.fault = Fault(disconnect_after_upload_bytes=2 * 2**20)
    assert pmd3(emulator, home, "backup2", "backup", str(backups)).returncode != 0
    assert emulator.reports[-1].error_code is None

    emulator.fault = None
    ok(pmd3(emulator, home, "backup2", "backup", "--full", str(backups)))
    assert_same_backup(backups / emulator.udid, emulator.device_dir)


def test_device_error_code_reaches_the_client(emulator: Emulator, tmp_path: Path) -> None:
    emulator.fault = Fault(fail_with_code=208)
    result = pmd3(emulator, tmp_path / "home", "backup2", "backup", str(tmp_path / "backups"))
    assert result.returncode != 0
    assert "208" in result.stdout + result.stderr


def test_pymobiledevice3_rejects_an_upload_outside_its_folder(emulator: Emulator, tmp_path: Path) -> None:
    backups = tmp_path / "nested" / "backups"
    emulator.fault = Fault(bad_upload_path="../evil")
    result = pmd3(emulator, tmp_path / "home", "backup2", "backup", str(backups))
    assert result.returncode != 0
    assert not (tmp_path / "nested" / "evil").exists()


def _mux_packet(tag: int, body: dict) -> bytes:
    payload = plistlib.dumps(body)
    return struct.pack("<IIII", 16 + len(payload), 1, 8, tag) + payload


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _mux_call(address: str, body: dict, tag: int = 7) -> tuple[socket.socket, dict]:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(_mux_packet(tag, body))
    length, version, _message, reply_tag = struct.unpack("<IIII", _recv_exact(sock, 16))
    assert (version, reply_tag) == (1, tag)
    return sock, plistlib.loads(_recv_exact(sock, length - 16))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff" + b"\0" * 12,  # usbmux length prefix of 4 GiB
        struct.pack("<IIII", 24, 1, 8, 1) + b"not a plist",  # plist packet that is not a plist
        b"GET / HTTP/1.1\r\n\r\n",
        struct.pack("<IIII", 1000, 1, 8, 1) + b"<?xml",  # truncated, then closed by us
    ],
)
def test_garbage_to_usbmux_closes_only_that_connection(idle_emulator: Emulator, garbage: bytes) -> None:
    host, port = idle_emulator.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(garbage)
        if garbage.endswith(b"<?xml"):
            sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock)
    sock, reply = _mux_call(idle_emulator.address, {"MessageType": "ListDevices"})
    sock.close()
    assert reply["DeviceList"][0]["Properties"]["SerialNumber"] == idle_emulator.udid


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 0x7FFFFFFF) + b"<plist>",  # absurd lockdownd length prefix: not allocated
        struct.pack(">I", 9) + b"\x00garbage\xff",
        struct.pack(">I", 5000) + b"truncated",
    ],
)
def test_garbage_to_lockdownd_closes_only_that_connection(idle_emulator: Emulator, garbage: bytes) -> None:
    sock, reply = _mux_call(
        idle_emulator.address, {"MessageType": "Connect", "DeviceID": 1, "PortNumber": socket.htons(62078)}
    )
    with sock:
        assert reply == {"MessageType": "Result", "Number": 0}
        sock.sendall(garbage)
        if garbage.endswith(b"truncated"):
            sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock)
    sock, reply = _mux_call(
        idle_emulator.address, {"MessageType": "Connect", "DeviceID": 1, "PortNumber": socket.htons(62078)}
    )
    with sock:
        assert reply["Number"] == 0
        query = plistlib.dumps({"Label": "test", "Request": "QueryType"})
        sock.sendall(struct.pack(">I", len(query)) + query)
        (length,) = struct.unpack(">I", _recv_exact(sock, 4))
        assert plistlib.loads(_recv_exact(sock, length))["Type"] == "com.apple.mobile.lockdown"


def test_connect_to_a_port_nobody_opened_is_refused(idle_emulator: Emulator) -> None:
    sock, reply = _mux_call(
        idle_emulator.address, {"MessageType": "Connect", "DeviceID": 1, "PortNumber": socket.htons(50000)}
    )
    sock.close()
    assert reply == {"MessageType": "Result", "Number": 3}


# --------------------------------------------------------------------------------------------------- info / list


def test_info_and_list(emulator: Emulator, tmp_path: Path) -> None:
    backups, home = tmp_path / "backups", tmp_path / "home"
    ok(pmd3(emulator, home, "backup2", "backup", str(backups)))
    info = ok(pmd3(emulator, home, "backup2", "info", str(backups))).stdout
    assert emulator.udid in info
    listing = ok(pmd3(emulator, home, "backup2", "list", str(backups))).stdout
    rows = [line for line in listing.splitlines() if line.count(",") >= 5]
    assert len(rows) - 1 == len(catalog(emulator.device_dir))


def test_pair_record_survives_a_restart(tmp_path: Path) -> None:
    def pair_record(emu: Emulator) -> bytes:
        sock, reply = _mux_call(emu.address, {"MessageType": "ReadPairRecord", "PairRecordID": emu.udid})
        sock.close()
        return reply["PairRecordData"]

    with Emulator(tmp_path / "emulator", seed=3, size=SIZE) as first:
        record = pair_record(first)
    with Emulator(tmp_path / "emulator", seed=3, size=SIZE) as second:
        assert pair_record(second) == record
    assert plistlib.loads(record)["HostCertificate"].startswith(b"-----BEGIN CERTIFICATE-----")


def test_a_many_files_phone_serves_that_many_small_plists(tmp_path: Path) -> None:
    """`emulator serve --many-files N` (the benchmarks' device path at scale): N plists besides the media."""
    default = len(SyntheticPhone(seed=3, size=SIZE).files())
    with Emulator(tmp_path / "emulator", seed=3, size=SIZE, many_files=3000) as emu:
        entries = [entry for entry, _ in catalog(emu.device_dir).values()]
    plists = [e for e in entries if e.relative_path.endswith(".plist")]
    assert len(plists) >= 3000 and len(entries) > default
