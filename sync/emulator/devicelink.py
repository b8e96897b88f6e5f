"""DeviceLink, device side: the version handshake, DL requests to the host, and the two file streams.

Room: DeviceLink (docs/protocol.md, 'DeviceLink'). Invariant: the device drives; every request it sends waits for the
host's `DLMessageStatusResponse` before the next one, file bodies move in bounded blocks straight between
disk and socket (memory: one block), and every uploaded file ends with an explicit CODE_SUCCESS block.

Messages are `u32be + plist` whose root is an array. Paths in requests are relative to the host's backup
root ("<UDID>/Snapshot/ab/ab12…"); pmd3 rejects absolute paths and `..` (`safe_paths.resolve_device_path`).
Progress values are reals 0–100 (lid `plist_get_real_val`, pmd3 hands them to its progress callback).

Stream B (UploadFiles, device → host), per file: u32be len + device path, u32be len + host path, then blocks
`u32be (n+1) + code + n bytes`: CODE_FILE_DATA (never with n = 0: pmd3 `_consume_file_transfer` stops on a
zero-length block and then asserts), ending in CODE_SUCCESS (len 1) or CODE_ERROR_REMOTE + message. A u32be 0
where the next device path would be ends the batch.
Stream A (DownloadFiles, host → device), per requested file: u32be len + path, then data blocks ending in
CODE_SUCCESS or CODE_ERROR_LOCAL + strerror; u32be 0 after the last file; then a status response.
"""

from __future__ import annotations

import logging
import os
import plistlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .wire import U32BE, FrameError, Link, recv_exact, recv_plist, recv_u32be, send_plist

log = logging.getLogger(__name__)

CODE_SUCCESS = 0x00
CODE_ERROR_LOCAL = 0x06
CODE_ERROR_REMOTE = 0x0B
CODE_FILE_DATA = 0x0C

DL_VERSION_MAJOR = 400  # real iOS 14+ (lid #998/#1379); lid rejects anything above (400, 0)
DL_VERSION_MINOR = 0
EMPTY = "___EmptyParameterString___"

# 1 MiB blocks: pmd3 buffers one whole block, lid reads them in pieces; both send 32 KiB themselves (docs/protocol.md).
UPLOAD_BLOCK = 1 * 2**20
# Hosts send 32 KiB download blocks (pmd3 `download_files`, Apple's DeviceLink BufferSize); cap generously.
MAX_DOWNLOAD_BLOCK = 16 * 2**20
MAX_PATH = 4096  # lid aborts on names longer than this
BLOCK_HEADER = struct.Struct(">IB")


class HostRefused(FrameError):
    """The host answered a DeviceLink request with a non-zero status."""

    def __init__(self, request: str, code: int, message: str) -> None:
        super().__init__("devicelink", f"{request}: host status {code} {message!r}")
        self.code = code


class Aborted(Exception):
    """The device dropped the link on purpose (a test fault), after closing the socket."""


@dataclass(frozen=True, slots=True)
class Stream:
    """A body made while it is sent (a file the phone encrypts for the host): its exact length, and a function
    yielding its bytes in pieces."""

    size: int
    open: Callable[[], Iterator[bytes]]


@dataclass(frozen=True, slots=True)
class Upload:
    """One file the device sends: where it lives on the phone, where the host should write it, its bytes."""

    device_path: str
    host_path: str
    source: Path | bytes | Stream


@dataclass(frozen=True, slots=True)
class Status:
    code: int
    message: str
    extra: Any


def signed(value: int) -> int:
    """Status codes are sent as uint64 two's complement (pmd3 `status_response` uses c_uint64)."""
    return value - 2**64 if value >= 2**63 else value


class DeviceLink:
    """The device end of one DeviceLink connection."""

    def __init__(self, link: Link, upload_budget: int | None = None) -> None:
        self.link = link
        # Fault injection: after this many uploaded body bytes the device drops the connection mid-file.
        self.upload_budget = upload_budget
        self.uploaded_bytes = 0

    # -- messages

    def send(self, message: list[Any]) -> None:
        # Devices send binary plists; both hosts accept either format.
        send_plist(self.link.sock, message, plistlib.FMT_BINARY)

    def receive(self) -> list[Any]:
        message = recv_plist(self.link.sock, "devicelink")
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            raise FrameError("devicelink", f"expected a DL message array, got {type(message).__name__}")
        return message

    def status(self, request: str, *, check: bool = True) -> Status:
        message = self.receive()
        if message[0] != "DLMessageStatusResponse" or len(message) < 3 or not isinstance(message[1], int):
            raise FrameError("devicelink", f"{request}: expected DLMessageStatusResponse, got {message[0]!r}")
        code = signed(message[1])
        text = message[2] if isinstance(message[2], str) and message[2] != EMPTY else ""
        status = Status(code, text, message[3] if len(message) > 3 else None)
        if check and code != 0:
            raise HostRefused(request, code, text)
        return status

    def version_exchange(self) -> None:
        self.send(["DLMessageVersionExchange", DL_VERSION_MAJOR, DL_VERSION_MINOR])
        reply = self.receive()
        if reply[:2] != ["DLMessageVersionExchange", "DLVersionsOk"]:
            raise FrameError("devicelink", f"version exchange refused: {reply!r}")
        self.send(["DLMessageDeviceReady"])

    def process_message(self, body: dict[str, Any]) -> None:
        self.send(["DLMessageProcessMessage", body])

    def finish(self, error_code: int, description: str = "", content: Any = None) -> None:
        """The final ProcessMessage that ends an operation (pmd3 `dl_loop` returns or raises on it)."""
        body: dict[str, Any] = {"MessageName": "Response", "ErrorCode": error_code}
        if description:
            body["ErrorDescription"] = description
        if content is not None:
            body["Content"] = content
        self.process_message(body)

    # -- requests with a status reply

    def create_directory(self, path: str) -> None:
        self.send(["DLMessageCreateDirectory", path])
        self.status("CreateDirectory")

    def move_items(self, moves: dict[str, str], progress: float) -> None:
        self.send(["DLMessageMoveItems", moves, {}, float(progress)])
        self.status("MoveItems")

    def remove_items(self, paths: list[str], progress: float) -> None:
        self.send(["DLMessageRemoveItems", paths, {}, float(progress)])
        self.status("RemoveItems")

    def free_disk_space(self) -> int:
        self.send(["DLMessageGetFreeDiskSpace"])
        extra = self.status("GetFreeDiskSpace").extra
        return extra if isinstance(extra, int) else 0

    def purge_disk_space(self, amount: int) -> Status:
        self.send(["DLMessagePurgeDiskSpace", amount, 4])
        return self.status("PurgeDiskSpace", check=False)

    def contents_of_directory(self, path: str) -> dict[str, Any]:
        self.send(["DLContentsOfDirectory", path])
        extra = self.status("ContentsOfDirectory").extra
        return extra if isinstance(extra, dict) else {}

    # -- stream B

    def upload_files(self, files: Iterable[Upload], total: int, progress: float) -> None:
        """One DLMessageUploadFiles batch. lid ignores the request unless it has 4 elements ([3] = total)."""
        self.send(["DLMessageUploadFiles", {}, float(progress), total])
        sock = self.link.sock
        for upload in files:
            names = b""
            for name in (upload.device_path, upload.host_path):
                encoded = name.encode()
                names += U32BE.pack(len(encoded)) + encoded
            sock.sendall(names)
            error = self._send_body(upload.source)
            if error is None:
                sock.sendall(BLOCK_HEADER.pack(1, CODE_SUCCESS))
            else:
                # pmd3 warns and keeps the partial file; lid reports it (docs/protocol.md, 'DeviceLink', stream B).
                message = error.encode()
                sock.sendall(BLOCK_HEADER.pack(1 + len(message), CODE_ERROR_REMOTE) + message)
        sock.sendall(U32BE.pack(0))
        self.status("UploadFiles")

    def _send_body(self, source: Path | bytes | Stream) -> str | None:
        if isinstance(source, bytes):
            for start in range(0, len(source), UPLOAD_BLOCK):
                self._send_block(memoryview(source)[start : start + UPLOAD_BLOCK])
            return None
        if isinstance(source, Stream):
            try:
                for piece in source.open():
                    for start in range(0, len(piece), UPLOAD_BLOCK):
                        if chunk := memoryview(piece)[start : start + UPLOAD_BLOCK]:
                            self._send_block(chunk)
            except OSError as e:  # the plain file behind it: as a file that cannot be read, this one file fails
                return f"{e.strerror} ({e.errno})"
            return None
        buf = bytearray(BLOCK_HEADER.size + UPLOAD_BLOCK)
        view = memoryview(buf)
        # File errors become CODE_ERROR_REMOTE for this one file; socket errors propagate and end the link.
        try:
            f = open(source, "rb")
        except OSError as e:
            return f"{e.strerror} ({e.errno})"
        with f:
            while True:
                try:
                    n = f.readinto(view[BLOCK_HEADER.size :])
                except OSError as e:
                    return f"{e.strerror} ({e.errno})"
                if not n:
                    return None
                self._send_block(view[BLOCK_HEADER.size : BLOCK_HEADER.size + n], view[: BLOCK_HEADER.size + n])

    def _send_block(self, data: memoryview, framed: memoryview | None = None) -> None:
        n = len(data)
        if self.upload_budget is not None and self.uploaded_bytes + n > self.upload_budget:
            self.link.close()
            raise Aborted(f"fault: dropped the connection after {self.uploaded_bytes} uploaded bytes")
        if framed is None:
            self.link.sock.sendall(BLOCK_HEADER.pack(n + 1, CODE_FILE_DATA) + bytes(data))
        else:
            BLOCK_HEADER.pack_into(framed, 0, n + 1, CODE_FILE_DATA)
            self.link.sock.sendall(framed)
        self.uploaded_bytes += n

    # -- stream A

    def download_files(self, paths: list[str], destination: Callable[[str], Path], progress: float) -> dict[str, str]:
        """Ask the host for `paths`; write each to `destination(path)`. Returns {path: error} for failures."""
        self.send(["DLMessageDownloadFiles", paths, {"DLDeviceIOCallbacks": 0}, float(progress), 0])
        errors: dict[str, str] = {}
        expected = set(paths)
        for path in self._incoming_paths():
            if path not in expected:
                raise FrameError("devicelink", f"host sent {path!r}, which was not requested")
            target = destination(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            error = self._receive_body(target)
            if error is not None:
                target.unlink(missing_ok=True)
                errors[path] = error
        status = self.status("DownloadFiles", check=False)
        if status.code not in (0, -13):  # -13 = "Multi status", per-file errors in extra
            raise HostRefused("DownloadFiles", status.code, status.message)
        if isinstance(status.extra, dict):
            for path, detail in status.extra.items():
                errors.setdefault(
                    path, str(detail.get("DLFileErrorString", detail)) if isinstance(detail, dict) else ""
                )
        return errors

    def _incoming_paths(self) -> Iterator[str]:
        while True:
            size = recv_u32be(self.link.sock, "devicelink")
            if size == 0:
                return
            if size > MAX_PATH:
                raise FrameError("devicelink", f"refusing a {size}-byte path")
            yield recv_exact(self.link.sock, size, "devicelink").decode("utf-8", "replace")

    def _receive_body(self, target: Path) -> str | None:
        sock = self.link.sock
        tmp = target.with_name(target.name + ".part")
        with open(tmp, "wb") as out:
            while True:
                size, code = BLOCK_HEADER.unpack(recv_exact(sock, BLOCK_HEADER.size, "devicelink"))
                if size == 0 or size - 1 > MAX_DOWNLOAD_BLOCK:
                    raise FrameError("devicelink", f"refusing a download block of {size} bytes")
                remaining = size - 1
                if code == CODE_FILE_DATA:
                    while remaining:
                        piece = recv_exact(sock, min(remaining, 2**20), "devicelink")
                        out.write(piece)
                        remaining -= len(piece)
                    continue
                payload = recv_exact(sock, remaining, "devicelink") if remaining else b""
                if code == CODE_SUCCESS:
                    break
                tmp_error = payload.decode("utf-8", "replace") or f"code {code:#x}"
                out.close()
                tmp.unlink(missing_ok=True)
                return tmp_error
        os.replace(tmp, target)
        return None
