"""The host side of DeviceLink as a *virtual backup directory over the store*.

pymobiledevice3's `DeviceLink` answers the device's file-system requests against a real folder. `VaultDeviceLink`
subclasses it and answers them against a staged snapshot instead:
- uploads stream block by block into the store's chunker (no temporary copy; memory independent of file size);
- CreateDirectory / MoveItems / RemoveItems / CopyItem edit the staged tree;
- DownloadFiles / ContentsOfDirectory are served from the staged tree, which starts as the device's current
  snapshot, so the device sees its previous Status.plist and Manifest.* and backs up incrementally. A file the
  vault cannot read back (damage) is answered with a file error (EIO), named in `unreadable`, and the next one is
  served: whether to go on without it is the device's decision.
Paths arrive relative to the backup root (`<UDID>/Snapshot/ab/ab12…`); anything that is absolute, climbs with
`..`, or lies outside `<UDID>/` is refused with ProtocolError before a byte is stored. In restore mode the tree is
read-only (a snapshot); the device only downloads.

A device is not trusted to be reasonable. What it can make the host hold or do is bounded (`StagingLimits`), and
going past a bound ends the backup with DeviceLimitExceeded (nothing is committed):
- every staged path is a safe relative path of bounded length, name length and depth (store/staged.py);
- the staged tree holds at most `entries` files and folders (real phones stay near 1 M files);
- one CopyItem copies at most `copy_one` entries and all CopyItems of a backup create at most `copy_total`, so
  copying a folder back and forth cannot double the tree again and again; copying or moving a folder into itself
  is refused;
- all MoveItems of a backup move at most `move_total` entries (a real backup moves each uploaded file once).
Each request costs O(what it names or touches) (the staged tree's folder index): a flood of requests costs at most
the bounds above plus O(1) per request, which the device pays for in bytes sent.

Every message is checked against its shape (`_SHAPES`: the arguments pymobiledevice3's `dl_loop` and the handlers
index, with their types) before anything acts on it, so a message of the wrong arity, an argument of the wrong
type or an unknown request is one ProtocolError naming it, never a KeyError from deep inside. Every read from the
device first reports to `ACTIVITY` (the watchdog of the operation, if one runs it), so a device that is working is
told from one that went silent.
"""

from __future__ import annotations

import ctypes
import stat
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymobiledevice3.service_connection import ServiceConnection
from pymobiledevice3.services.device_link import (
    BULK_OPERATION_ERROR,
    CODE_ERROR_LOCAL,
    CODE_ERROR_REMOTE,
    CODE_FILE_DATA,
    CODE_SUCCESS,
    ERRNO_TO_DEVICE_ERROR,
    FILE_TRANSFER_TERMINATOR,
    DeviceLink,
)

from phonevault.store.errors import PhonevaultError, UnsafePath
from phonevault.store.repository import Repository
from phonevault.store.staged import StagedTree
from phonevault.store.trees import FileEntry
from phonevault.store.writer import SnapshotWriter

from .decrypted import Holding, as_sent, is_held
from .errors import DeviceDisconnected, DeviceLimitExceeded, ProtocolError
from .paths import shown

FRAME = 32 * 1024  # Apple's DeviceLink BufferSize: bigger frames got BackupAgent2 jetsammed (pmd3 #1165)
MAX_NAME = 4096  # libimobiledevice aborts on longer names too
MAX_BLOCK = 64 << 20  # a larger data block is a corrupt or hostile stream, not a file
_HDR = struct.Struct(">IB")
ENOENT, EIO = 2, 5

Progress = Callable[[int, int], None]  # (files received, bytes received)

#: Called before every read from the device: the operation's watchdog sets it (a context variable reaches the link
#: through pymobiledevice3's service objects without being threaded through them).
ACTIVITY: ContextVar[Callable[[], None] | None] = ContextVar("phonevault_device_activity", default=None)


@dataclass(frozen=True, slots=True)
class StagingLimits:
    """What one device backup may stage (see the module docstring)."""

    entries: int = 2_000_000
    copy_one: int = 1 << 16
    copy_total: int = 1 << 18
    move_total: int = 4_000_000


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _is_result(v: Any) -> bool:
    return isinstance(v, dict) and type(v.get("ErrorCode")) is int


def _is_int(v: Any) -> bool:
    return type(v) is int


def _anything(_v: Any) -> bool:
    return True


_STR, _STRS, _MAP = (_is_str, "a string"), (_is_strs, "a list of strings"), (_is_str_map, "a dict of strings")
_ANY = (_anything, "")
#: Each message the host accepts from a device: what its arguments must be (a longer message is fine).
_SHAPES: dict[str, tuple[tuple[Callable[[Any], bool], str], ...]] = {
    "DLMessageVersionExchange": ((_is_int, "an integer version"),),
    "DLMessageDeviceReady": (),
    "DLMessageProcessMessage": ((_is_result, "a dict with an integer ErrorCode"),),
    "DLMessageCreateDirectory": (_STR,),
    "DLContentsOfDirectory": (_STR,),
    "DLMessageUploadFiles": (_ANY, _ANY),
    "DLMessageDownloadFiles": (_STRS, _ANY, _ANY),
    "DLMessageMoveItems": (_MAP, _ANY, _ANY),
    "DLMessageMoveFiles": (_MAP, _ANY, _ANY),
    "DLMessageRemoveItems": (_STRS, _ANY, _ANY),
    "DLMessageRemoveFiles": (_STRS, _ANY, _ANY),
    "DLMessageCopyItem": (_STR, _STR),
    "DLMessageGetFreeDiskSpace": (),
    "DLMessagePurgeDiskSpace": (),
}


def check_message(message: Any) -> list[Any]:
    """`message` if it is a DeviceLink message the host understands, else ProtocolError naming what is wrong."""
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise ProtocolError("DeviceLink", f"expected a message array, got {shown(repr(message)[:80])}")
    name = message[0]
    if name == "DLMessageDisconnect":
        raise DeviceDisconnected("the device ended the session (DLMessageDisconnect) before the operation finished")
    shape = _SHAPES.get(name)
    if shape is None:
        raise ProtocolError("DeviceLink", f"unknown message {shown(name[:80])}")
    if len(message) - 1 < len(shape):
        raise ProtocolError("DeviceLink", f"{name} has {len(message) - 1} argument(s), expected {len(shape)}")
    for i, (ok, what) in enumerate(shape, 1):
        if not ok(message[i]):
            raise ProtocolError("DeviceLink", f"{name}: argument {i} is {shown(repr(message[i])[:80])}, not {what}")
    return message


@contextmanager
def _device_paths() -> Iterator[None]:
    """A path the store refuses is the device's fault: report it as the device's error."""
    try:
        yield
    except UnsafePath as e:
        raise ProtocolError("DeviceLink", str(e)) from None


def normalize(path: str, udid: str) -> str:
    """`<UDID>/a/b` -> `a/b`, refusing anything outside the device's own backup folder."""
    if not isinstance(path, str) or not path or "\x00" in path or path.startswith(("/", "\\")):
        raise ProtocolError("DeviceLink", f"refusing path {path!r}: not relative to the backup folder")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ProtocolError("DeviceLink", f"refusing path {path!r}: it climbs out of the backup folder")
    if not parts or parts[0].lower() != udid.lower():
        raise ProtocolError("DeviceLink", f"refusing path {path!r}: outside this device's backup folder {udid}/")
    return "/".join(parts[1:])


class CheckedLink(DeviceLink):
    """pymobiledevice3's DeviceLink reading the device as this room does: every message checked (`check_message`)
    instead of indexed blindly, and each read telling the watchdog (ACTIVITY) that the device is still talking."""

    async def _recvall(self, size: int) -> bytes:
        if (poke := ACTIVITY.get()) is not None:
            poke()
        return await super()._recvall(size)

    async def receive_message(self) -> list[Any]:
        if (poke := ACTIVITY.get()) is not None:
            poke()
        return check_message(await super().receive_message())

    async def version_exchange(self) -> None:
        offer = await self.receive_message()
        if offer[0] != "DLMessageVersionExchange":
            raise ProtocolError("DeviceLink", f"expected DLMessageVersionExchange, got {shown(offer[0][:80])}")
        await self.service.send_plist(["DLMessageVersionExchange", "DLVersionsOk", offer[1]])
        ready = await self.receive_message()
        if ready[0] != "DLMessageDeviceReady":
            raise ProtocolError("DeviceLink", f"expected DLMessageDeviceReady, got {shown(ready[0][:80])}")


class VaultDeviceLink(CheckedLink):
    def __init__(
        self,
        service: ServiceConnection,
        repo: Repository,
        udid: str,
        *,
        writer: SnapshotWriter | None = None,
        snapshot_state: dict[str, FileEntry] | None = None,
        progress: Progress | None = None,
        limits: StagingLimits = StagingLimits(),
        holding: Holding | None = None,
    ) -> None:
        # DeviceLink wants a root path only for its file-system handlers, all of which are overridden here.
        root = Path(repo.backend.location)  # pymobiledevice3 only names it in log lines
        super().__init__(service, root)
        self.repo = repo
        self.udid = udid
        self.writer = writer
        self._readonly = StagedTree(snapshot_state if snapshot_state is not None else {}) if writer is None else None
        self.progress = progress
        self.limits = limits
        self.holding = holding  # --store-decrypted: keyed uploads held until Manifest.db comes (sync/decrypted.py)
        self._copied = 0  # entries created by CopyItem so far
        self._moved = 0  # entries moved by MoveItems so far
        self.problems: list[str] = []
        self.unreadable: dict[str, str] = {}  # path -> why: files the device asked for that the vault cannot give
        self.files_received = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        # pmd3 only knows the Items spellings; libimobiledevice also accepts the Files ones.
        self._dl_handlers["DLMessageMoveFiles"] = self.move_items
        self._dl_handlers["DLMessageRemoveFiles"] = self.remove_items

    # --- the staged tree ------------------------------------------------------------------------------------
    @property
    def tree(self) -> StagedTree:
        return self.writer.tree if self.writer is not None else self._readonly

    @property
    def state(self) -> dict[str, FileEntry]:
        return self.tree.state

    def _room_for(self, n: int, what: str) -> None:
        if len(self.state) + n > self.limits.entries:
            raise DeviceLimitExceeded(f"{what}: too many files and folders staged", self.limits.entries)

    def _rel(self, path: str) -> str:
        return normalize(path, self.udid)

    def put_bytes(self, rel: str, data: bytes) -> None:
        fw = self.writer.open_file(rel, 0o100644, time.time_ns())
        fw.write(data)
        fw.close()

    def has(self, rel: str) -> bool:
        e = self.state.get(rel)
        return e is not None and not e.is_dir and e.size > 0

    def read(self, rel: str) -> bytes | None:
        e = self.state.get(rel)
        return b"".join(self._read(e)) if e is not None and not e.is_dir else None

    def _read(self, entry: FileEntry) -> Iterator[bytes]:
        """The file as the device sent it (a file stored decrypted is encrypted again: sync/decrypted.py)."""
        if self.holding is not None and is_held(entry):  # received in this backup, held until it ends
            return self.holding.pieces(entry)
        return as_sent(entry, self.writer.read_file(entry) if self.writer is not None else self.repo.read_file(entry))

    def _mutable(self, what: str) -> bool:
        if self.writer is None:
            self.problems.append(f"the device asked to {what} during a restore; ignored")
            return False
        return True

    # --- framing helpers ------------------------------------------------------------------------------------
    async def _name(self) -> str:
        (size,) = struct.unpack(">I", await self._recvall(4))
        if size > MAX_NAME:
            raise ProtocolError("DeviceLink", f"file name length {size} is absurd (limit {MAX_NAME})")
        return (await self._recvall(size)).decode("utf-8", errors="replace")

    async def _block_header(self) -> tuple[int, int]:
        size, code = _HDR.unpack(await self._recvall(_HDR.size))
        if size == 0 or size - 1 > MAX_BLOCK:
            raise ProtocolError("DeviceLink", f"file block length {size} is invalid")
        return size - 1, code

    # --- handlers (device -> host) --------------------------------------------------------------------------
    async def upload_files(self, _message: Any) -> None:
        while True:
            device_name = await self._name()
            if not device_name:
                break
            host_name = await self._name()
            rel = self._rel(host_name)
            size, code = await self._block_header()
            fw = None
            if self._mutable(f"upload {rel}"):
                if rel not in self.state:
                    self._room_for(1, f"uploading {rel}")
                with _device_paths():
                    if self.holding is not None and self.holding.wants(rel):
                        fw = self.holding.open_file(rel, 0o100644, time.time_ns())
                    else:
                        fw = self.writer.open_file(rel, 0o100644, time.time_ns())
            while code == CODE_FILE_DATA:
                data = await self._recvall(size)
                if fw is not None:
                    fw.write(data)
                self.bytes_received += len(data)
                if self.progress:
                    self.progress(self.files_received, self.bytes_received)
                size, code = await self._block_header()
            if code == CODE_ERROR_REMOTE:
                reason = (await self._recvall(size)).decode("utf-8", errors="replace")
                self.problems.append(f"{rel}: the device could not send it ({reason}); kept what arrived")
            elif code != CODE_SUCCESS:
                raise ProtocolError("DeviceLink", f"unexpected block code {code:#x} in the upload of {rel}")
            elif size:
                await self._recvall(size)
            if fw is not None:
                fw.close()
            self.files_received += 1
        await self.status_response(0)

    async def download_files(self, message: Any) -> None:
        status: dict[str, dict[str, Any]] = {}
        for name in message[1]:
            raw = name.encode()
            await self._sendall(struct.pack(">I", len(raw)) + raw)
            entry = self.state.get(self._rel(name))
            if entry is None or entry.is_dir:
                err = b"No such file or directory"
                await self._sendall(_HDR.pack(len(err) + 1, CODE_ERROR_LOCAL) + err)
                status[name] = {
                    "DLFileErrorString": err.decode(),
                    "DLFileErrorCode": ctypes.c_uint64(ERRNO_TO_DEVICE_ERROR[ENOENT]).value,
                }
                continue
            try:
                for chunk in self._read(entry):
                    for i in range(0, len(chunk), FRAME):
                        frame = chunk[i : i + FRAME]
                        await self._sendall(_HDR.pack(len(frame) + 1, CODE_FILE_DATA) + frame)
                        self.bytes_sent += len(frame)
                        if self.progress:
                            self.progress(self.files_received, self.bytes_sent)
            except PhonevaultError as e:
                # The vault cannot give this file back: a file error, after whatever data went already (as
                # libimobiledevice does when a read fails), so the device drops it; the others are still served.
                self.unreadable[self._rel(name)] = str(e)
                err = b"Input/output error"
                await self._sendall(_HDR.pack(len(err) + 1, CODE_ERROR_LOCAL) + err)
                status[name] = {
                    "DLFileErrorString": err.decode(),
                    "DLFileErrorCode": ctypes.c_uint64(ERRNO_TO_DEVICE_ERROR[EIO]).value,
                }
                continue
            await self._sendall(_HDR.pack(1, CODE_SUCCESS))
        await self._sendall(FILE_TRANSFER_TERMINATOR)
        if status:
            await self.status_response(BULK_OPERATION_ERROR, "Multi status", status)
        else:
            await self.status_response(0)

    async def contents_of_directory(self, message: Any) -> None:
        rel = self._rel(message[1])
        listing: dict[str, dict[str, Any]] = {}
        for name, e, has_children in self.tree.children(rel):
            is_dir = has_children or e is None or e.is_dir
            listing[name] = {
                "DLFileType": "DLFileTypeDirectory" if is_dir else "DLFileTypeRegular",
                "DLFileSize": 0 if is_dir else e.size,
                "DLFileModificationDate": _naive_utc(e.mtime_ns if e is not None else 0),
            }
        await self.status_response(0, status_dict=listing)

    async def create_directory(self, message: Any) -> None:
        rel = self._rel(message[1])
        if rel and self._mutable(f"create {rel}"):
            if rel not in self.state:
                self._room_for(1, f"creating {rel}")
            with _device_paths():
                self.writer.add_dir(rel, stat.S_IFDIR | 0o755, time.time_ns())
        await self.status_response(0)

    async def move_items(self, message: Any) -> None:
        for src, dst in dict(message[1]).items():
            s, d = self._rel(src), self._rel(dst)
            if not self._mutable(f"move {s}"):
                continue
            if s != d:
                with _device_paths():
                    self.tree.check_relocation(s, d, "moved")
            left = self.limits.move_total - self._moved
            if self.tree.count(s, left + 1) > left:
                raise DeviceLimitExceeded(
                    f"MoveItems {s} -> {d}: too many entries moved in one backup", self.limits.move_total
                )
            with _device_paths():
                n = self.writer.move(s, d)
            self._moved += n
            if n == 0:
                self.problems.append(f"{s}: the device moved it but it was never uploaded")
        await self.status_response(0)

    async def remove_items(self, message: Any) -> None:
        for path in message[1]:
            rel = self._rel(path)
            if self._mutable(f"remove {rel}"):
                self.writer.remove(rel)
        await self.status_response(0)

    async def copy_item(self, message: Any) -> None:
        s, d = self._rel(message[1]), self._rel(message[2])
        if self._mutable(f"copy {s}"):
            lim = self.limits
            with _device_paths():
                self.tree.check_relocation(s, d, "copied")
            allowed = min(lim.copy_one, lim.copy_total - self._copied)
            n = self.tree.count(s, allowed + 1)
            if n > lim.copy_one:
                raise DeviceLimitExceeded(f"CopyItem {s} -> {d} copies too many entries", lim.copy_one)
            if n > allowed:
                raise DeviceLimitExceeded(f"CopyItem {s} -> {d}: too many entries copied in one backup", lim.copy_total)
            self._room_for(n, f"CopyItem {s} -> {d}")
            with _device_paths():
                self._copied += self.writer.copy(s, d)
        await self.status_response(0)

    async def get_free_disk_space(self, _message: Any) -> None:
        free = self.repo.backend.free_space()
        if free is None:  # a store without a size limit
            free = 1 << 50
        self._reported_free_space = free
        await self.status_response(0, status_dict=free)


def _naive_utc(ns: int) -> datetime:
    """plistlib wants naive UTC datetimes (it handles the Apple epoch itself)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).replace(tzinfo=None)
