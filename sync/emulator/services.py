"""Auxiliary lockdown services a backup or restore opens beside mobilebackup2, with minimal honest behaviour.

Room: the side services (docs/protocol.md, 'Side services'). Invariant: each answers exactly the requests
pmd3's backup/restore flow sends (`Mobilebackup2Service.backup/restore`, `_backup_lock`,
`init_mobile_backup_factory_info`) in the framing its client expects, refuses anything it cannot parse by
closing the connection, and never buffers more than its stated cap.

- notification_proxy: posts and observations need no reply; `Shutdown` → `ProxyDeath` (lid
  `np_client_free` waits 30 s for it otherwise).
- afc: a tiny in-memory filesystem shared by all AFC connections: enough for the sync lock file
  (`/com.apple.itunes.lock_sync`, FILE_LOCK with would-block semantics), the iTunes control files pmd3 asks
  for (absent → OBJECT_NOT_FOUND), and `/iTunesRestore/RestoreApplications.plist` written on restore.
- installation_proxy: `Browse` answers one batch of user apps, then `Complete`.
- springboardservices: pmd3 always opens it; `getIconPNGData` answers a 1×1 PNG.
"""

from __future__ import annotations

import logging
import posixpath
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .wire import FrameError, Link, PeerClosed, recv_exact, recv_plist, send_plist

log = logging.getLogger(__name__)

MAX_SERVICE_REQUEST = 1 * 2**20


def _plist_requests(link: Link, layer: str) -> Any:
    """Yield plist requests until the host closes; a malformed frame ends the connection with a log line."""
    while True:
        try:
            yield recv_plist(link.sock, layer, MAX_SERVICE_REQUEST)
        except FrameError as e:
            if not (isinstance(e, PeerClosed) and e.clean):
                log.warning("%s %s: %s; closing the connection", layer, link.peer, e.reason)
            return
        except OSError as e:
            log.warning("%s %s: %s; closing the connection", layer, link.peer, e)
            return


# ------------------------------------------------------------------------------------- notification_proxy


def serve_notification_proxy(link: Link) -> None:
    for request in _plist_requests(link, "notification_proxy"):
        command = request.get("Command") if isinstance(request, dict) else None
        if command == "Shutdown":
            send_plist(link.sock, {"Command": "ProxyDeath"})
            return
        if command not in ("PostNotification", "ObserveNotification", "SetNotificationState"):
            log.info("notification_proxy %s: ignoring %r", link.peer, command)


# ------------------------------------------------------------------------------------- installation_proxy


def serve_installation_proxy(link: Link, apps: Callable[[], list[dict[str, Any]]]) -> None:
    for request in _plist_requests(link, "installation_proxy"):
        command = request.get("Command") if isinstance(request, dict) else None
        if command == "Browse":
            current = apps()
            send_plist(
                link.sock,
                {
                    "Status": "BrowsingApplications",
                    "CurrentIndex": 0,
                    "CurrentAmount": len(current),
                    "Total": len(current),
                    "CurrentList": current,
                },
            )
            send_plist(link.sock, {"Status": "Complete"})
        elif command == "Lookup":
            send_plist(link.sock, {"Status": "Complete", "LookupResult": {}})
        else:
            send_plist(link.sock, {"Status": "Complete", "Error": "UnknownCommand"})


# ------------------------------------------------------------------------------------- springboardservices


def _one_pixel_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\0\0\0\0"))
        + chunk(b"IEND", b"")
    )


ICON_PNG = _one_pixel_png()


def serve_springboard(link: Link) -> None:
    for request in _plist_requests(link, "springboardservices"):
        command = request.get("command") if isinstance(request, dict) else None
        if command in ("getIconPNGData", "getHomeScreenWallpaperPNGData"):
            send_plist(link.sock, {"pngData": ICON_PNG})
        elif command == "getIconState":
            send_plist(link.sock, [])
        elif command == "getInterfaceOrientation":
            send_plist(link.sock, {"interfaceOrientation": 1})
        else:
            send_plist(link.sock, {})


# ------------------------------------------------------------------------------------- afc

AFC_MAGIC = b"CFA6LPAA"
AFC_HEADER = struct.Struct("<8sQQQQ")  # magic, entire_length, this_length, packet_num, operation
# pmd3 writes in ≤ 4 MiB pieces (`set_file_contents`); the whole in-memory tree is capped as well.
MAX_AFC_PACKET = 8 * 2**20
MAX_AFC_BYTES = 64 * 2**20

OP_STATUS, OP_DATA, OP_READ_DIR, OP_REMOVE_PATH, OP_MAKE_DIR = 0x01, 0x02, 0x03, 0x08, 0x09
OP_GET_FILE_INFO, OP_GET_DEVINFO, OP_FILE_OPEN, OP_FILE_OPEN_RES = 0x0A, 0x0B, 0x0D, 0x0E
OP_READ, OP_WRITE, OP_FILE_CLOSE, OP_FILE_LOCK = 0x0F, 0x10, 0x14, 0x1B

AFC_SUCCESS, AFC_INVALID_ARG, AFC_OBJECT_NOT_FOUND, AFC_OBJECT_IS_DIR = 0, 7, 8, 9
AFC_OP_NOT_SUPPORTED, AFC_NO_SPACE, AFC_OP_WOULD_BLOCK, AFC_DIR_NOT_EMPTY = 15, 18, 19, 33

LOCK_SH, LOCK_EX, LOCK_UN = 1 | 4, 2 | 4, 8 | 4
MODE_RDONLY = 1


@dataclass
class _Handle:
    path: str
    position: int = 0
    owner: int = 0  # id of the connection that opened it


@dataclass
class AfcStore:
    """The emulated media partition: directories, small files, open handles and flock-style locks."""

    files: dict[str, bytearray] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/iTunes_Control", "/iTunes_Control/iTunes", "/Books"})
    handles: dict[int, _Handle] = field(default_factory=dict)
    locks: dict[str, int] = field(default_factory=dict)  # path → handle holding the exclusive lock
    next_handle: int = 1
    mutex: threading.Lock = field(default_factory=threading.Lock)

    def release_connection(self, owner: int) -> None:
        """A closed connection drops its handles and locks, as the kernel does for a dead afcd client."""
        with self.mutex:
            for number in [n for n, h in self.handles.items() if h.owner == owner]:
                self._close(number)

    def _close(self, number: int) -> None:
        handle = self.handles.pop(number)
        if self.locks.get(handle.path) == number:
            del self.locks[handle.path]

    def used(self) -> int:
        return sum(len(v) for v in self.files.values())


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def _cstrings(payload: bytes) -> list[str]:
    return [p.decode("utf-8", "replace") for p in payload.split(b"\0")[:-1]]


def _kv(pairs: dict[str, Any]) -> bytes:
    return b"".join(f"{k}\0{v}\0".encode() for k, v in pairs.items())


def serve_afc(link: Link, store: AfcStore) -> None:
    owner = id(link)
    try:
        while True:
            try:
                header = recv_exact(link.sock, AFC_HEADER.size, "afc")
            except PeerClosed as e:
                if not e.clean:
                    log.warning("afc %s: %s; closing the connection", link.peer, e.reason)
                return
            magic, entire, _this, packet_num, operation = AFC_HEADER.unpack(header)
            if magic != AFC_MAGIC or not AFC_HEADER.size <= entire <= MAX_AFC_PACKET:
                log.warning(
                    "afc %s: bad header (magic %r, length %d); closing the connection", link.peer, magic, entire
                )
                return
            payload = recv_exact(link.sock, entire - AFC_HEADER.size, "afc")
            with store.mutex:
                reply_op, body = _afc_operation(store, owner, operation, payload)
            length = AFC_HEADER.size + len(body)
            link.sock.sendall(AFC_HEADER.pack(AFC_MAGIC, length, length, packet_num, reply_op) + body)
    except (FrameError, OSError) as e:
        log.warning("afc %s: %s; closing the connection", link.peer, e)
    finally:
        store.release_connection(owner)


def _status(code: int) -> tuple[int, bytes]:
    return OP_STATUS, struct.pack("<Q", code)


def _afc_operation(store: AfcStore, owner: int, operation: int, payload: bytes) -> tuple[int, bytes]:
    """One AFC request against the store (called with `store.mutex` held)."""
    if operation == OP_GET_FILE_INFO:
        path = _norm(_cstrings(payload)[0]) if payload else "/"
        now_ns = time.time_ns()
        if path in store.dirs:
            info = {"st_size": 64, "st_blocks": 0, "st_nlink": 2, "st_ifmt": "S_IFDIR"}
        elif path in store.files:
            size = len(store.files[path])
            info = {"st_size": size, "st_blocks": (size + 511) // 512, "st_nlink": 1, "st_ifmt": "S_IFREG"}
        else:
            return _status(AFC_OBJECT_NOT_FOUND)
        return OP_DATA, _kv({**info, "st_mtime": now_ns, "st_birthtime": now_ns})
    if operation == OP_GET_DEVINFO:
        return OP_DATA, _kv(
            {"Model": "iPhone", "FSTotalBytes": 128 * 2**30, "FSFreeBytes": 64 * 2**30, "FSBlockSize": 4096}
        )
    if operation == OP_READ_DIR:
        path = _norm(_cstrings(payload)[0]) if payload else "/"
        if path not in store.dirs:
            return _status(AFC_OBJECT_NOT_FOUND)
        children = sorted(
            posixpath.basename(p) for p in (*store.dirs, *store.files) if p != "/" and posixpath.dirname(p) == path
        )
        return OP_DATA, b"".join(f"{n}\0".encode() for n in [".", "..", *children])
    if operation == OP_MAKE_DIR:
        path = _norm(_cstrings(payload)[0]) if payload else "/"
        while path not in store.dirs:
            if path in store.files:
                return _status(AFC_INVALID_ARG)
            store.dirs.add(path)
            path = posixpath.dirname(path)
        return _status(AFC_SUCCESS)
    if operation == OP_REMOVE_PATH:
        path = _norm(_cstrings(payload)[0]) if payload else "/"
        if path in store.files:
            del store.files[path]
        elif path in store.dirs and path != "/":
            if any(posixpath.dirname(p) == path for p in (*store.dirs, *store.files)):
                return _status(AFC_DIR_NOT_EMPTY)
            store.dirs.discard(path)
        else:
            return _status(AFC_OBJECT_NOT_FOUND)
        return _status(AFC_SUCCESS)
    if operation == OP_FILE_OPEN:
        if len(payload) < 9:
            return _status(AFC_INVALID_ARG)
        (mode,) = struct.unpack_from("<Q", payload)
        path = _norm(_cstrings(payload[8:])[0])
        if path in store.dirs:
            return _status(AFC_OBJECT_IS_DIR)
        if path not in store.files:
            if mode == MODE_RDONLY or posixpath.dirname(path) not in store.dirs:
                return _status(AFC_OBJECT_NOT_FOUND)
            store.files[path] = bytearray()
        elif mode in (3, 4):  # w / w+ truncate
            store.files[path] = bytearray()
        number = store.next_handle
        store.next_handle += 1
        position = len(store.files[path]) if mode in (5, 6) else 0
        store.handles[number] = _Handle(path, position, owner)
        return OP_FILE_OPEN_RES, struct.pack("<Q", number)
    if operation in (OP_READ, OP_WRITE, OP_FILE_CLOSE, OP_FILE_LOCK):
        if len(payload) < 8:
            return _status(AFC_INVALID_ARG)
        (number,) = struct.unpack_from("<Q", payload)
        handle = store.handles.get(number)
        if handle is None or handle.owner != owner:
            return _status(AFC_INVALID_ARG)
        if operation == OP_FILE_CLOSE:
            store._close(number)
            return _status(AFC_SUCCESS)
        data = store.files.setdefault(handle.path, bytearray())
        if operation == OP_READ:
            if len(payload) < 16:
                return _status(AFC_INVALID_ARG)
            (size,) = struct.unpack_from("<Q", payload, 8)
            chunk = bytes(data[handle.position : handle.position + min(size, MAX_AFC_PACKET)])
            handle.position += len(chunk)
            return OP_DATA, chunk
        if operation == OP_WRITE:
            chunk = payload[8:]
            if store.used() + len(chunk) > MAX_AFC_BYTES:
                return _status(AFC_NO_SPACE)
            data[handle.position : handle.position + len(chunk)] = chunk
            handle.position += len(chunk)
            return _status(AFC_SUCCESS)
        if len(payload) < 16:
            return _status(AFC_INVALID_ARG)
        (op,) = struct.unpack_from("<Q", payload, 8)
        holder = store.locks.get(handle.path)
        if op == LOCK_EX:
            if holder not in (None, number):
                return _status(AFC_OP_WOULD_BLOCK)
            store.locks[handle.path] = number
        elif op == LOCK_UN:
            if holder == number:
                del store.locks[handle.path]
        elif op != LOCK_SH:
            return _status(AFC_INVALID_ARG)
        return _status(AFC_SUCCESS)
    log.info("afc: unsupported operation 0x%x", operation)
    return _status(AFC_OP_NOT_SUPPORTED)
