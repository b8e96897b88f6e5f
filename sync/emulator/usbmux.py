"""The emulator's usbmuxd: the plist protocol over TCP, one attached device, Connect turns the socket into a pipe.

Room: usbmuxd. Invariant: every reply is an XML plist in a version-1 header that echoes the request's tag
(pmd3 `usbmux.py` raises on a tag mismatch; lum `receive_packet` parses replies with `plist_from_xml`), and a
packet whose length prefix is absurd closes that connection without allocating it.

Packet (little-endian): u32 length (16 + payload), u32 version (1 = plist), u32 message (8 = PLIST), u32 tag,
payload. pmd3 probes every connection with `ReadBUID` and picks its binary or plist client from the reply's
header version (`MuxConnection.create`), so a version-1 reply is what keeps it on the plist protocol.
"""

from __future__ import annotations

import logging
import plistlib
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from . import hostile
from .wire import FrameError, Link, PeerClosed, recv_exact

log = logging.getLogger(__name__)

HEADER = struct.Struct("<IIII")
VERSION_PLIST = 1
MESSAGE_RESULT = 1
MESSAGE_PLIST = 8
# Requests are tiny (the largest is SavePairRecord, a few KiB of PEM); anything bigger is garbage.
MAX_PACKET = 1 * 2**20

RESULT_OK = 0
RESULT_BADCOMMAND = 1
RESULT_BADDEV = 2
RESULT_CONNREFUSED = 3
RESULT_BADVERSION = 6

LOCKDOWN_PORT = 62078

PortHandler = Callable[[Link], None]


class MuxDevice(Protocol):
    """What usbmuxd needs to know about the one device it has attached."""

    udid: str
    device_id: int
    buid: str

    def pair_record(self) -> bytes: ...

    def open_port(self, port: int) -> PortHandler | None: ...


def device_entry(device: MuxDevice) -> dict[str, Any]:
    """The `Attached` record shared by ListDevices and the Listen push.

    pmd3 reads the top-level DeviceID plus `Properties.SerialNumber/ConnectionType`; lum reads only the
    `Properties` copy and fails the *whole* list unless ConnectionType is USB or Network.
    """
    return {
        "MessageType": "Attached",
        "DeviceID": device.device_id,
        "Properties": {
            "DeviceID": device.device_id,
            "SerialNumber": device.udid,
            "ConnectionType": "USB",
            "ProductID": 0x12A8,
            "LocationID": 0x14100000,
            "ConnectionSpeed": 480000000,
            "USBSerialNumber": device.udid,
        },
    }


def serve(link: Link, device: MuxDevice) -> None:
    """Answer usbmuxd requests on `link` until it closes, or hand it to a device port after Connect."""
    while True:
        try:
            tag, request = _recv_request(link)
        except FrameError as e:
            if not (isinstance(e, PeerClosed) and e.clean):
                log.warning("usbmux %s: %s; closing the connection", link.peer, e.reason)
            return
        if hostile.usbmux(link, device, tag, request):
            return
        if request is None:
            _reply(link, tag, {"MessageType": "Result", "Number": RESULT_BADVERSION})
            return
        kind = request.get("MessageType")
        if kind == "ReadBUID":
            _reply(link, tag, {"BUID": device.buid})
        elif kind == "ListDevices":
            _reply(link, tag, {"DeviceList": [device_entry(device)]})
        elif kind == "Listen":
            _result(link, tag, RESULT_OK)
            # Pushed events carry tag 0, as usbmuxd sends them outside any request.
            _reply(link, 0, device_entry(device))
        elif kind == "ReadPairRecord":
            if request.get("PairRecordID") in (device.udid, device.udid.replace("-", "")):
                _reply(link, tag, {"PairRecordData": device.pair_record()})
            else:
                _result(link, tag, RESULT_BADDEV)
        elif kind in ("SavePairRecord", "DeletePairRecord"):
            # The provisioned record is the device's own: a host may save or forget its copy, and the next
            # ReadPairRecord still serves the one lockdownd accepts.
            log.info("usbmux %s: %s %s acknowledged", link.peer, kind, request.get("PairRecordID"))
            _result(link, tag, RESULT_OK)
        elif kind == "Connect":
            handler = _connect(link, tag, request, device)
            if handler is not None:
                handler(link)
                return
        else:
            log.info("usbmux %s: unsupported request %r", link.peer, kind)
            _result(link, tag, RESULT_BADCOMMAND)


def _connect(link: Link, tag: int, request: dict[str, Any], device: MuxDevice) -> PortHandler | None:
    if request.get("DeviceID") != device.device_id:
        _result(link, tag, RESULT_BADDEV)
        return None
    # PortNumber arrives in network byte order inside a little-endian field: pmd3 `MuxConnection.connect`
    # passes socket.htons(port), lum does the same; 62078 becomes 0xF27E on the wire (32498 as an int).
    wire_port = request.get("PortNumber")
    if not isinstance(wire_port, int) or not 0 <= wire_port <= 0xFFFF:
        _result(link, tag, RESULT_BADCOMMAND)
        return None
    port = socket.ntohs(wire_port)
    handler = device.open_port(port)
    if handler is None:
        log.info("usbmux %s: connect to closed port %d refused", link.peer, port)
        _result(link, tag, RESULT_CONNREFUSED)
        return None
    _result(link, tag, RESULT_OK)
    return handler


def _recv_request(link: Link) -> tuple[int, dict[str, Any] | None]:
    """One request: (tag, plist dict), or (tag, None) for a binary-protocol (version 0) packet."""
    length, version, message, tag = HEADER.unpack(recv_exact(link.sock, HEADER.size, "usbmux"))
    if not HEADER.size <= length <= MAX_PACKET:
        raise FrameError("usbmux", f"refusing a packet of {length} bytes (limit {MAX_PACKET})")
    payload = recv_exact(link.sock, length - HEADER.size, "usbmux")
    if version != VERSION_PLIST or message != MESSAGE_PLIST:
        return tag, None
    try:
        request = plistlib.loads(payload)
    except Exception as e:
        raise FrameError("usbmux", f"payload is not a plist: {e}") from e
    if not isinstance(request, dict):
        raise FrameError("usbmux", f"payload is a {type(request).__name__}, not a dict")
    return tag, request


def _reply(link: Link, tag: int, body: dict[str, Any]) -> None:
    payload = plistlib.dumps(body, fmt=plistlib.FMT_XML)
    link.sock.sendall(HEADER.pack(HEADER.size + len(payload), VERSION_PLIST, MESSAGE_PLIST, tag) + payload)


def _result(link: Link, tag: int, number: int) -> None:
    _reply(link, tag, {"MessageType": "Result", "Number": number})
