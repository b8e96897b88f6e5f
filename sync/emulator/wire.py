"""Byte-level framing shared by every emulator layer: exact reads, capped `u32be + plist` frames.

Room: the wire. Invariant: nothing a client sends can make the emulator allocate more than a stated cap
(`MAX_PLIST_FRAME` for plists, the caller's cap for anything else) or block forever on a half-closed
socket; a bad frame raises `FrameError`, and the caller closes that one connection with a log line.

lockdownd, its services (notification_proxy, installation_proxy, springboardservices) and DeviceLink all
frame messages as a big-endian u32 length followed by a plist (pmd3 `service_connection.py`
`build_plist`/`recv_prefixed`). usbmuxd (little-endian header) and AFC (40-byte header) have their own
headers and use only `recv_exact` from here.
"""

from __future__ import annotations

import plistlib
import socket
import ssl
import struct
from typing import Any

from phonevault.sync.errors import ProtocolError

# pmd3 `ServiceConnection.max_frame_size`: the largest plist frame either side buffers whole.
MAX_PLIST_FRAME = 128 * 2**20

U32BE = struct.Struct(">I")


class FrameError(ProtocolError):
    """A peer sent a frame we refuse to read (truncated, oversized, or not a plist)."""


class PeerClosed(FrameError):
    """The peer closed the connection: `clean` between frames, otherwise in the middle of one."""

    def __init__(self, layer: str, reason: str, clean: bool = False) -> None:
        super().__init__(layer, reason)
        self.clean = clean


def recv_exact(sock: socket.socket, size: int, layer: str) -> bytes:
    """Read exactly `size` bytes; the caller has already checked `size` against its cap."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        try:
            n = sock.recv_into(view[got:], size - got)
        except (ConnectionError, TimeoutError) as e:
            raise PeerClosed(layer, f"connection lost: {e}") from e
        if n == 0:
            raise PeerClosed(layer, f"connection closed after {got} of {size} bytes", clean=got == 0)
        got += n
    return bytes(buf)


def recv_u32be(sock: socket.socket, layer: str) -> int:
    return U32BE.unpack(recv_exact(sock, 4, layer))[0]


def recv_plist(sock: socket.socket, layer: str, limit: int = MAX_PLIST_FRAME) -> Any:
    """Read one `u32be length + plist` frame (XML or binary, as both pmd3 and lid may send either)."""
    size = recv_u32be(sock, layer)
    if size == 0 or size > limit:
        raise FrameError(layer, f"refusing a plist frame of {size} bytes (limit {limit})")
    payload = recv_exact(sock, size, layer)
    try:
        return plistlib.loads(payload)
    except Exception as e:  # plistlib raises InvalidFileException, ExpatError, ValueError, ...
        raise FrameError(layer, f"frame of {size} bytes is not a plist: {e}") from e


def pack_plist(obj: Any, fmt: plistlib.PlistFormat = plistlib.FMT_XML) -> bytes:
    payload = plistlib.dumps(obj, fmt=fmt, sort_keys=False)
    return U32BE.pack(len(payload)) + payload


def send_plist(sock: socket.socket, obj: Any, fmt: plistlib.PlistFormat = plistlib.FMT_XML) -> None:
    sock.sendall(pack_plist(obj, fmt))


class Link:
    """One accepted connection. usbmuxd turns it into a pipe to a device port, lockdownd may upgrade it to
    TLS in place, so every layer reads and writes through `link.sock` rather than keeping its own socket."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock: socket.socket = sock
        self.peer = peer

    def start_tls(self, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        """Server side of a TLS handshake on the same socket (pmd3 gives the handshake 10 s)."""
        self.sock.settimeout(timeout)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(None)

    def abort(self) -> None:
        """Shut the connection down under its reader; safe from another thread (the owner still closes it).

        Goes around `SSLSocket.shutdown`, which would also drop the TLS object a blocked reader is using.
        """
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Abort and release the connection; only the thread serving it calls this."""
        self.abort()
        self.sock.close()
