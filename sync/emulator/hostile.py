"""A hostile device: the emulator breaking usbmuxd, lockdownd, DeviceLink and MobileBackup2 on purpose.

Room: hostility, for tests of the host side. `Fault(hostile=NAME)` picks one behaviour of `BEHAVIOURS` (or of
`CHANGE_PASSWORD`); the layers call in here at their fault points (usbmux `serve`, lockdown `serve`,
`Device.lockdown_values`, mobilebackup2 `serve` before the DeviceLink handshake, `_dispatch` when a Backup, Restore
or ChangePassword starts) and carry on as usual for every behaviour that is not theirs. Each behaviour is what a broken or malicious phone (or usbmuxd) can put on the wire:
truncated frames, absurd lengths, wrong types, paths that climb out of the backup folder, request floods, silence,
a disconnect mid-file, garbage where a TLS handshake or a plist should be.

Invariant: a behaviour never makes the emulator itself allocate from a claimed length or hang on stop. Where the
behaviour is silence, the connection waits for the host to hang up (or for `Emulator.stop`, which aborts every
link); the host is expected to give up by itself, and a test that waits on it forever has found a host bug.

What the host should say is not decided here: each behaviour only states, in `BEHAVIOURS`, which layer it breaks.
"""

from __future__ import annotations

import logging
import plistlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .wire import U32BE, FrameError, Link, send_plist

if TYPE_CHECKING:
    from .device import Device
    from .devicelink import DeviceLink

log = logging.getLogger(__name__)

#: What a layer's hook tells its caller: not this layer's behaviour (carry on as usual), or the hook answered and
#: the connection is over (the hook has already waited for the host to hang up).
PASS = False
DONE = True

U32_MAX = 0xFFFFFFFF
GIB4 = 0xFFFFFFF0  # "a 4 GB plist": the largest length a u32 prefix can claim, give or take a header
NAME_2G = 2**31  # "a 2^31 DeviceLink name length"
USBMUX_HEADER = struct.Struct("<IIII")
BLOCK_HEADER = struct.Struct(">IB")
CODE_FILE_DATA = 0x0C
FLOOD = 64  # CopyItem requests in a flood; each doubles the copied folder


def behaviour(dl_or_device: Any) -> str | None:
    """The hostile behaviour asked of this device, if any."""
    fault = getattr(dl_or_device, "fault", None)
    return getattr(fault, "hostile", None)


def wait_for_hangup(link: Link) -> None:
    """Silence: read and drop whatever the host sends until it closes the connection (or the emulator stops)."""
    try:
        while link.sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass


def _garbage(n: int) -> bytes:
    # Deterministic noise: the same behaviour sends the same bytes on every run.
    return bytes((i * 167 + 13) % 251 for i in range(n))


# --------------------------------------------------------------------------------------------------- usbmuxd


def usbmux(link: Link, device: Any, tag: int, request: dict[str, Any] | None) -> bool:
    """Called for every usbmuxd request before it is answered."""
    name = behaviour(device)
    if name is None or not name.startswith("usbmux-"):
        return PASS
    kind = request.get("MessageType") if isinstance(request, dict) else None
    if name == "usbmux-silent":
        wait_for_hangup(link)
        return DONE
    if name == "usbmux-garbage":
        link.sock.sendall(_garbage(64))
        wait_for_hangup(link)
        return DONE
    if name == "usbmux-absurd-length":
        link.sock.sendall(USBMUX_HEADER.pack(GIB4, 1, 8, tag) + b"<?xml")  # then nothing: the rest never comes
        wait_for_hangup(link)
        return DONE
    if name == "usbmux-truncated":
        payload = plistlib.dumps({"BUID": "x"})
        link.sock.sendall(USBMUX_HEADER.pack(16 + len(payload), 1, 8, tag) + payload[: len(payload) // 2])
        return DONE  # and hang up mid-packet
    if name == "usbmux-wrong-types" and kind == "ListDevices":
        _usbmux_reply(link, tag, {"DeviceList": [{"MessageType": "Attached", "DeviceID": "one", "Properties": ["x"]}]})
        return DONE
    if name == "usbmux-device-list-not-a-list" and kind == "ListDevices":
        _usbmux_reply(link, tag, {"DeviceList": {"DeviceID": 1}})
        return DONE
    return PASS


def _usbmux_reply(link: Link, tag: int, body: dict[str, Any]) -> None:
    payload = plistlib.dumps(body, fmt=plistlib.FMT_XML)
    link.sock.sendall(USBMUX_HEADER.pack(USBMUX_HEADER.size + len(payload), 1, 8, tag) + payload)


# --------------------------------------------------------------------------------------------------- lockdownd


def lockdown(link: Link, device: Any, request: dict[str, Any]) -> bool:
    """Called for every lockdownd request before it is answered."""
    name = behaviour(device)
    if name is None or not name.startswith("lockdown-"):
        return PASS
    what = request.get("Request")
    if name == "lockdown-silent":
        wait_for_hangup(link)
        return DONE
    if name == "lockdown-garbage":
        link.sock.sendall(U32BE.pack(64) + _garbage(64))
        wait_for_hangup(link)
        return DONE
    if name == "lockdown-absurd-length":
        link.sock.sendall(U32BE.pack(GIB4) + b"<?xml")
        wait_for_hangup(link)
        return DONE
    if name == "lockdown-truncated":
        payload = plistlib.dumps({"Request": what, "Type": "com.apple.mobile.lockdown"})
        link.sock.sendall(U32BE.pack(len(payload)) + payload[: len(payload) // 2])
        return DONE
    if name == "lockdown-not-a-dict":
        send_plist(link.sock, ["Request", what])
        wait_for_hangup(link)
        return DONE
    if what == "StartSession" and name in ("lockdown-bad-tls", "lockdown-tls-silent"):
        send_plist(link.sock, {"Request": what, "SessionID": "HOSTILE", "EnableSessionSSL": True})
        if name == "lockdown-bad-tls":
            # Where the TLS ServerHello belongs: a plist, then noise, then the phone hangs up.
            link.sock.sendall(plistlib.dumps({"not": "tls"}) + _garbage(256))
            return DONE
        wait_for_hangup(link)
        return DONE
    return PASS


#: lockdownd values replaced by `lockdown-wrong-types` and `lockdown-udid-traversal`.
_VALUES: dict[str, dict[str, Any]] = {
    "lockdown-wrong-types": {"DeviceName": {"not": "a name"}, "ProductVersion": [17, 4], "BuildVersion": b"\x00\x01"},
    "lockdown-udid-traversal": {"UniqueDeviceID": "../../../escaped-udid"},
    "lockdown-udid-not-a-string": {"UniqueDeviceID": {"Nested": ["dict"]}},
}


def lockdown_values(device: Any, values: dict[str, Any]) -> dict[str, Any]:
    """lockdownd's root dict as a hostile phone reports it."""
    return {**values, **_VALUES.get(behaviour(device) or "", {})}


# --------------------------------------------------------------------------------------------------- mobilebackup2


def mobilebackup2(dl: DeviceLink, device: Device) -> bool:
    """Called when the mobilebackup2 service starts, before the DeviceLink version exchange."""
    name = behaviour(device)
    if name not in _HANDSHAKE:
        return PASS
    try:
        _HANDSHAKE[name](dl)
    except (FrameError, OSError) as e:
        log.info("hostile %s: the host hung up (%s)", name, e)
        return DONE
    wait_for_hangup(dl.link)
    return DONE


def _silent(_dl: DeviceLink) -> None:
    pass


def _version_wrong_types(dl: DeviceLink) -> None:
    dl.send(["DLMessageVersionExchange", {"major": 400}])
    dl.receive()
    dl.send(["DLMessageDeviceReady", ["not", "ready"]])


def _hello_wrong_types(dl: DeviceLink) -> None:
    dl.version_exchange()
    dl.receive()  # Hello
    dl.send(["DLMessageProcessMessage", ["MessageName", "Response", "ErrorCode", 0]])


def _hello_no_error_code(dl: DeviceLink) -> None:
    dl.version_exchange()
    dl.receive()
    dl.process_message({"MessageName": "Response", "ProtocolVersion": "2.1"})


_HANDSHAKE: dict[str, Callable[[DeviceLink], None]] = {
    "dl-silent-handshake": _silent,
    "dl-version-wrong-types": _version_wrong_types,
    "dl-hello-wrong-types": _hello_wrong_types,
    "dl-hello-no-error-code": _hello_no_error_code,
}


def operation(dl: DeviceLink, device: Device, target: str) -> bool:
    """Called when the host asks for a Backup or a Restore; a hostile behaviour replaces the whole operation (in a
    restore, the host refuses what would change its snapshot, so most scripts meet refusals or silence sooner)."""
    name = behaviour(device)
    script = _BACKUP.get(name or "")
    if script is None:
        return PASS
    try:
        script(dl, target)
    except (FrameError, OSError) as e:
        log.info("hostile %s: the host hung up (%s)", name, e)
        return DONE
    # Whatever the host made of it, the device has nothing more to say: it waits for the host to hang up.
    wait_for_hangup(dl.link)
    return DONE


def _begin(dl: DeviceLink, target: str) -> None:
    """The opening of a real backup, so the host has staged something when the hostility starts."""
    dl.create_directory(f"{target}/Snapshot")
    dl.create_directory(f"{target}/Snapshot/ab")
    upload(dl, target, {"Snapshot/ab/ab" + "0" * 38: b"a file that arrived before the trouble"})


def upload(dl: DeviceLink, target: str, files: dict[str, bytes]) -> None:
    from .devicelink import Upload

    dl.upload_files(
        [Upload(f"/var/mobile/{p}", f"{target}/{p}", data) for p, data in files.items()],
        sum(map(len, files.values())),
        10.0,
    )


def _raw(dl: DeviceLink, data: bytes) -> None:
    dl.link.sock.sendall(data)


def _name(text: str) -> bytes:
    raw = text.encode()
    return U32BE.pack(len(raw)) + raw


def _request(*message: Any) -> Callable[[DeviceLink, str], None]:
    """A script that starts a backup, then sends one DL message (with `{T}` in strings replaced by the target)."""

    def fill(value: Any, target: str) -> Any:
        if isinstance(value, str):
            return value.replace("{T}", target)
        if isinstance(value, list):
            return [fill(v, target) for v in value]
        if isinstance(value, dict):
            return {fill(k, target): fill(v, target) for k, v in value.items()}
        return value

    def script(dl: DeviceLink, target: str) -> None:
        _begin(dl, target)
        dl.send(fill(list(message), target))
        dl.status(str(message[0]))

    return script


def _silent_after_begin(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)


def _stall_mid_frame(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    _raw(dl, U32BE.pack(1000) + b"bplist00" + b"\x00" * 8)  # 16 of 1000 bytes, then silence


def _truncated_frame(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    _raw(dl, U32BE.pack(1000) + b"bplist00" + b"\x00" * 8)
    _hang_up(dl)


def _absurd_plist_length(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    _raw(dl, U32BE.pack(U32_MAX) + b"bplist00")


def _garbage_plist(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    _raw(dl, U32BE.pack(200) + _garbage(200))


def _not_an_array(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    _raw(dl, _frame({"DLMessage": "UploadFiles"}))


def _frame(obj: Any) -> bytes:
    payload = plistlib.dumps(obj, fmt=plistlib.FMT_BINARY)
    return U32BE.pack(len(payload)) + payload


def _absurd_name_length(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    dl.send(["DLMessageUploadFiles", {}, 50.0, 10])
    _raw(dl, U32BE.pack(NAME_2G) + b"/var/mobile/")


def _absurd_block_length(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    dl.send(["DLMessageUploadFiles", {}, 50.0, 10])
    _raw(dl, _name("/var/mobile/x") + _name(f"{target}/Snapshot/ab/x") + BLOCK_HEADER.pack(NAME_2G, CODE_FILE_DATA))


def _disconnect_mid_file(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    dl.send(["DLMessageUploadFiles", {}, 50.0, 1 << 20])
    body = _garbage(4096)
    _raw(dl, _name("/var/mobile/x") + _name(f"{target}/Snapshot/ab/x") + BLOCK_HEADER.pack(1 + (1 << 20), 0x0C) + body)
    _hang_up(dl)


def _copy_flood(dl: DeviceLink, target: str) -> None:
    upload(dl, target, {f"A/f{i}": bytes([i]) for i in range(8)})
    for i in range(FLOOD):
        for src, dst in (("A", "B"), ("B", f"A/b{i}")):
            dl.send(["DLMessageCopyItem", f"{target}/{src}", f"{target}/{dst}"])
            dl.status("CopyItem")


def _hang_up(dl: DeviceLink) -> None:
    try:
        dl.link.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    raise OSError("hostile: hung up on purpose")


def _final_error_code(value: Any) -> Callable[[DeviceLink, str], None]:
    def script(dl: DeviceLink, target: str) -> None:
        _begin(dl, target)
        dl.process_message({"MessageName": "Response", "ErrorCode": value})

    return script


def _final_not_a_dict(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    dl.send(["DLMessageProcessMessage", "all done"])


def _disconnect_message(dl: DeviceLink, target: str) -> None:
    _begin(dl, target)
    dl.send(["DLMessageDisconnect", "___EmptyParameterString___"])


_BACKUP: dict[str, Callable[[DeviceLink, str], None]] = {
    # silence and cut frames
    "dl-silent-after-backup": _silent_after_begin,
    "dl-stall-mid-frame": _stall_mid_frame,
    "dl-truncated-frame": _truncated_frame,
    "dl-disconnect-mid-file": _disconnect_mid_file,
    # absurd lengths
    "dl-absurd-plist-length": _absurd_plist_length,
    "dl-absurd-name-length": _absurd_name_length,
    "dl-absurd-block-length": _absurd_block_length,
    # not a DeviceLink message
    "dl-garbage-plist": _garbage_plist,
    "dl-message-not-an-array": _not_an_array,
    "dl-unknown-message": _request("DLMessageSelfDestruct", "{T}"),
    "dl-message-name-not-a-string": _request(42, "{T}"),
    "dl-disconnect-message": _disconnect_message,
    # wrong types and arities
    "dl-create-directory-dict": _request("DLMessageCreateDirectory", {"{T}/x": 1}),
    "dl-move-items-array": _request("DLMessageMoveItems", ["{T}/a", "{T}/b"], {}, 50.0),
    "dl-move-items-dict-values": _request("DLMessageMoveItems", {"{T}/Snapshot/ab": {"to": "{T}/ab"}}, {}, 50.0),
    "dl-remove-items-int": _request("DLMessageRemoveItems", 123, {}, 50.0),
    "dl-remove-items-dicts": _request("DLMessageRemoveItems", [{"path": "{T}/ab"}], {}, 50.0),
    "dl-copy-item-array": _request("DLMessageCopyItem", ["{T}/Snapshot"], "{T}/copy"),
    "dl-download-files-dict": _request("DLMessageDownloadFiles", {"{T}/Status.plist": 1}, {}, 50.0, 0),
    "dl-download-files-ints": _request("DLMessageDownloadFiles", [1, 2, 3], {}, 50.0, 0),
    "dl-contents-of-directory-int": _request("DLContentsOfDirectory", 7),
    "dl-upload-files-short": _request("DLMessageUploadFiles"),
    "dl-move-items-short": _request("DLMessageMoveItems"),
    "dl-final-not-a-dict": _final_not_a_dict,
    "dl-final-error-code-string": _final_error_code("0"),
    "dl-final-error-code-missing": _request("DLMessageProcessMessage", {"MessageName": "Response"}),
    # paths out of the backup folder
    "dl-traversal-upload": lambda dl, t: upload(dl, t, {"../../escaped-upload": b"x"}),
    "dl-traversal-upload-absolute": lambda dl, t: _raw_upload(dl, "/tmp/escaped-absolute"),
    "dl-traversal-other-device": lambda dl, t: _raw_upload(dl, "00000000-0000000000000000/Manifest.db"),
    "dl-traversal-mkdir": _request("DLMessageCreateDirectory", "{T}/../../escaped-dir"),
    "dl-traversal-move": _request("DLMessageMoveItems", {"{T}/Snapshot/ab": "{T}/../../escaped-move"}, {}, 50.0),
    "dl-traversal-copy": _request("DLMessageCopyItem", "{T}/Snapshot", "/etc/escaped-copy"),
    "dl-traversal-remove": _request("DLMessageRemoveItems", ["{T}/../other-device"], {}, 50.0),
    "dl-traversal-download": _request("DLMessageDownloadFiles", ["{T}/../../../etc/passwd"], {}, 50.0, 0),
    "dl-traversal-contents": _request("DLContentsOfDirectory", "/"),
    "dl-traversal-nul": _request("DLMessageCreateDirectory", "{T}/a\x00/../../x"),
    # floods
    "dl-copy-flood": _copy_flood,
}


def _raw_upload(dl: DeviceLink, host_path: str) -> None:
    dl.send(["DLMessageUploadFiles", {}, 10.0, 1])
    _raw(dl, _name("/var/mobile/x") + _name(host_path) + BLOCK_HEADER.pack(2, CODE_FILE_DATA) + b"x")
    _raw(dl, BLOCK_HEADER.pack(1, 0) + U32BE.pack(0))
    dl.status("UploadFiles")


def change_password(dl: DeviceLink, device: Device) -> bool:
    """Called when the host asks for a ChangePassword: a behaviour of `CHANGE_PASSWORD` answers it instead."""
    name = behaviour(device)
    script = CHANGE_PASSWORD.get(name or "")
    if script is None:
        return PASS
    try:
        script(dl)
    except (FrameError, OSError) as e:
        log.info("hostile %s: the host hung up (%s)", name, e)
        return DONE
    wait_for_hangup(dl.link)
    return DONE


#: How a broken phone can answer ChangePassword (`phonevault device encryption|password`). Apart from BEHAVIOURS,
#: which every backup meets: these only change what the answer to a ChangePassword is.
CHANGE_PASSWORD: dict[str, Callable[[DeviceLink], None]] = {
    "cp-silent": _silent,  # a phone waiting forever on a passcode nobody enters
    "cp-stall-mid-frame": lambda dl: _raw(dl, U32BE.pack(1000) + b"bplist00" + b"\x00" * 8),
    "cp-hang-up": lambda dl: _hang_up(dl),
    "cp-garbage-plist": lambda dl: _raw(dl, U32BE.pack(200) + _garbage(200)),
    "cp-final-not-a-dict": lambda dl: dl.send(["DLMessageProcessMessage", "all done"]),
    "cp-final-error-code-string": lambda dl: dl.process_message({"MessageName": "Response", "ErrorCode": "0"}),
    "cp-file-request": lambda dl: dl.create_directory("x/Snapshot"),
    "cp-traversal-download": lambda dl: dl.download_files(["../../etc/passwd"], lambda p: Path("/nonexistent"), 0.0),
    "cp-disconnect-message": lambda dl: dl.send(["DLMessageDisconnect", "___EmptyParameterString___"]),
}


#: Every behaviour by name, and the layer it breaks.
BEHAVIOURS: dict[str, str] = {
    **{n: "usbmuxd" for n in ("usbmux-silent", "usbmux-garbage", "usbmux-absurd-length", "usbmux-truncated",
                              "usbmux-wrong-types", "usbmux-device-list-not-a-list")},
    **{n: "lockdownd" for n in ("lockdown-silent", "lockdown-garbage", "lockdown-absurd-length",
                                "lockdown-truncated", "lockdown-not-a-dict", "lockdown-bad-tls",
                                "lockdown-tls-silent", *_VALUES)},
    **{n: "DeviceLink handshake" for n in _HANDSHAKE},
    **{n: "MobileBackup2 backup" for n in _BACKUP},
}  # fmt: skip
