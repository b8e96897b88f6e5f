"""A hostile device against the host's DeviceLink: real sockets, real framing on both ends, a real vault.

The host end is the production `VaultDeviceLink` over pymobiledevice3's `ServiceConnection`; the device end is the
emulator's DeviceLink framing (`sync/emulator/devicelink.py`) driven by a script in a thread, so every message is
what a device would put on the wire. Each session mirrors `backup2._backup`: the snapshot is committed only if the
device ends the session with success; anything else must leave the vault without a new snapshot.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from pymobiledevice3.service_connection import ServiceConnection

from phonevault.store.check import check
from phonevault.store.records import DeviceRecord
from phonevault.store.trees import load_tree
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.devicelink import StagingLimits, VaultDeviceLink
from phonevault.sync.emulator.devicelink import DeviceLink, Upload
from phonevault.sync.emulator.wire import Link
from phonevault.sync.errors import DeviceLimitExceeded, ProtocolError

UDID = "00008030-000A1B2C3D4E5F60"

Script = Callable[[DeviceLink], None]


@dataclass
class Session:
    error: BaseException | None = None  # what the host raised
    device_error: BaseException | None = None  # how the device script ended, if not cleanly
    snapshot: object = None
    writer: SnapshotWriter | None = None
    state: dict = field(default_factory=dict)


def run_session(repo, script: Script, *, incremental: bool = False, limits: StagingLimits | None = None):
    """Run `script` as the device against a VaultDeviceLink over a socket pair; commit as backup2 does."""
    host_sock, device_sock = socket.socketpair()
    out = Session()

    def device() -> None:
        dl = DeviceLink(Link(device_sock, "hostile-device"))
        try:
            dl.version_exchange()
            script(dl)
            dl.finish(0)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out.device_error = e
        finally:
            device_sock.close()

    async def host() -> None:
        service = await ServiceConnection.from_socket(host_sock)
        try:
            link = VaultDeviceLink(service, repo, UDID, writer=out.writer, limits=limits or StagingLimits())
            await link.version_exchange()
            await link.dl_loop(lambda _p: None)
        finally:
            await service.close()

    out.writer = SnapshotWriter(repo, UDID, DeviceRecord(), incremental=incremental)
    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    try:
        asyncio.run(host())
        out.writer.drop_nonempty_dirs()
        out.state = dict(out.writer.state)
        out.snapshot = out.writer.commit(f"device:{UDID}")
    except ProtocolError as e:
        out.error = e
    finally:
        out.writer.close()
        thread.join(30)
    assert not thread.is_alive()
    return out


def upload(dl: DeviceLink, files: dict[str, bytes]) -> None:
    dl.upload_files(
        [Upload(f"/var/mobile/{p}", f"{UDID}/{p}", data) for p, data in files.items()],
        sum(map(len, files.values())),
        10.0,
    )


def copy_item(dl: DeviceLink, src: str, dst: str) -> None:
    dl.send(["DLMessageCopyItem", f"{UDID}/{src}", f"{UDID}/{dst}"])
    dl.status("CopyItem")


def snapshots(repo) -> int:
    return sum(len(v.snapshots) for v in repo.devices())


def writers(repo) -> list[str]:
    return [n for n, _ in repo.backend.list("writers/")]


def assert_nothing_committed(repo, session: Session) -> None:
    assert session.snapshot is None
    assert snapshots(repo) == 0
    assert writers(repo) == []  # the aborted writer is unregistered: no prune waits for it
    assert check(repo).ok


def test_a_well_behaved_session_through_the_harness_commits(repo):
    def script(dl: DeviceLink) -> None:
        dl.create_directory(f"{UDID}/Snapshot")
        dl.create_directory(f"{UDID}/Snapshot/ab")
        upload(dl, {"Snapshot/ab/ab01": b"photo" * 100, "Snapshot/Manifest.db": b"db", "Snapshot/ab/ab02": b"x"})
        dl.move_items({f"{UDID}/Snapshot/ab/ab01": f"{UDID}/ab/ab01", f"{UDID}/Snapshot/Manifest.db": f"{UDID}/M"}, 90)
        copy_item(dl, "ab/ab01", "cd/cd01")
        listing = dl.contents_of_directory(UDID)
        assert {k: v["DLFileType"] for k, v in listing.items()} == {
            "Snapshot": "DLFileTypeDirectory",
            "ab": "DLFileTypeDirectory",
            "cd": "DLFileTypeDirectory",
            "M": "DLFileTypeRegular",
        }
        dl.remove_items([f"{UDID}/Snapshot"], 98)

    s = run_session(repo, script)
    assert s.error is None and s.device_error is None
    tree = load_tree(s.snapshot.tree, repo.get_blob)
    assert sorted(tree) == ["M", "ab/ab01", "cd/cd01"]
    assert b"".join(repo.read_file(tree["cd/cd01"])) == b"photo" * 100
    assert writers(repo) == []


def test_copying_the_backup_root_into_itself_is_refused(repo):
    """The tester's flood starts with CopyItem <UDID> -> <UDID>/x: refused at the first message."""

    def script(dl: DeviceLink) -> None:
        upload(dl, {"ab/ab01": b"1", "ab/ab02": b"2"})
        for i in range(20):
            dl.send(["DLMessageCopyItem", UDID, f"{UDID}/copy{i}"])
            dl.status("CopyItem")

    s = run_session(repo, script)
    assert isinstance(s.error, ProtocolError) and "backup folder itself" in str(s.error)
    assert s.device_error is not None  # the host hung up on it
    assert_nothing_committed(repo, s)


def test_copying_a_folder_into_its_own_subfolder_is_refused(repo):
    def script(dl: DeviceLink) -> None:
        upload(dl, {"ab/ab01": b"1"})
        copy_item(dl, "ab", "ab/nested")

    s = run_session(repo, script)
    assert isinstance(s.error, ProtocolError) and "into itself" in str(s.error)
    assert_nothing_committed(repo, s)


def test_a_copy_flood_ends_with_a_device_error_and_nothing_committed(repo):
    """Folders copied back and forth double the staged tree at every round (the tester's 20 messages of a few bytes
    made 1 048 579 phantom files). With the default limits the flood stops at the copy fan-out bound."""
    rounds = []

    def script(dl: DeviceLink) -> None:
        upload(dl, {f"A/f{i}": bytes([i]) for i in range(4)})
        for i in range(40):
            copy_item(dl, "A", "B")
            copy_item(dl, "B", f"A/b{i}")
            rounds.append(i)

    s = run_session(repo, script)
    assert isinstance(s.error, DeviceLimitExceeded), s.error
    assert "CopyItem" in str(s.error) and "limit" in str(s.error)
    assert len(rounds) < 20  # stopped by a copy bound, long before the path depth or the time of day
    assert_nothing_committed(repo, s)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("ab/" + "n" * 256, "longer than 255 bytes"),
        ("/".join(["d"] * 70), "levels deep"),
        ("/".join(["n" * 200] * 6), "longer than 1024 bytes"),
    ],
)
def test_paths_the_store_refuses_end_the_backup(repo, path, text):
    def script(dl: DeviceLink) -> None:
        upload(dl, {path: b"data"})

    s = run_session(repo, script)
    assert isinstance(s.error, ProtocolError) and text in str(s.error), s.error
    assert_nothing_committed(repo, s)


def test_a_copy_that_would_make_a_path_too_deep_is_refused_before_anything_changes(repo):
    deep = "/".join(["d"] * 60)

    def script(dl: DeviceLink) -> None:
        upload(dl, {f"{deep}/f": b"1"})
        copy_item(dl, "d", "x/y/z/w/v/u")

    s = run_session(repo, script)
    assert isinstance(s.error, ProtocolError) and "levels deep" in str(s.error)
    assert_nothing_committed(repo, s)


def test_the_total_number_of_staged_entries_is_bounded(repo):
    def script(dl: DeviceLink) -> None:
        for i in range(5):
            upload(dl, {f"ab/f{i}-{j}": b"x" for j in range(10)})
        dl.create_directory(f"{UDID}/one-too-many")

    s = run_session(repo, script, limits=StagingLimits(entries=50))
    assert isinstance(s.error, DeviceLimitExceeded) and "creating one-too-many" in str(s.error)
    assert_nothing_committed(repo, s)


def test_moving_a_folder_back_and_forth_is_bounded_in_total(repo):
    moves = []

    def script(dl: DeviceLink) -> None:
        upload(dl, {f"A/f{i}": b"x" for i in range(300)})
        for i in range(100):
            src, dst = ("A", "B") if i % 2 == 0 else ("B", "A")
            dl.move_items({f"{UDID}/{src}": f"{UDID}/{dst}"}, 90)
            moves.append(i)

    s = run_session(repo, script, limits=StagingLimits(move_total=1000))
    assert isinstance(s.error, DeviceLimitExceeded) and "MoveItems" in str(s.error)
    assert len(moves) == 3  # 3 × 300 entries moved; the fourth would pass 1000
    assert_nothing_committed(repo, s)


def test_per_file_moves_of_a_real_backup_stay_within_the_bounds(repo):
    """A full backup moves every uploaded file once from Snapshot/ into place, then removes Snapshot/."""
    files = {f"Snapshot/{i % 16:02x}/{i % 16:02x}{i:038x}": b"%d" % i for i in range(400)}

    def script(dl: DeviceLink) -> None:
        upload(dl, files)
        dl.move_items({f"{UDID}/{p}": f"{UDID}/{p.removeprefix('Snapshot/')}" for p in files}, 95)
        dl.remove_items([f"{UDID}/Snapshot"], 98)

    s = run_session(repo, script, limits=StagingLimits(entries=500, move_total=400))
    assert s.error is None and s.device_error is None
    assert sorted(load_tree(s.snapshot.tree, repo.get_blob)) == sorted(p.removeprefix("Snapshot/") for p in files)
