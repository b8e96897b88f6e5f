"""A device's backup encryption, over MobileBackup2 with pymobiledevice3 as the client: whether it encrypts its
backups, turning that on and off, and changing the backup password. The same connection and watchdog as a backup
(`backup2.connected`, `backup2.watched`); nothing here touches a vault or writes a local file.

Whether a device encrypts is lockdown's `WillEncrypt` in the `com.apple.mobile.backup` domain (what
idevicebackup2 and pymobiledevice3 read before a backup). The change is one MobileBackup2 message (as
idevicebackup2 `changepw` / `encryption on|off` and pymobiledevice3 `change_password` send it):
  {MessageName: "ChangePassword", TargetIdentifier: UDID, OldPassword?: str, NewPassword?: str}
OldPassword absent and NewPassword set turns encryption on, OldPassword set and no NewPassword turns it off, both
change the password. The device answers with one ProcessMessage `{MessageName: "Response", ErrorCode,
ErrorDescription?}` and asks for no file; a phone first asks its user for the passcode on screen, so the answer can
take as long as a person does (the watchdog's idle bound). ErrorCode 207 is a wrong old password
("Invalid password (MBErrorDomain/207)"): WrongDevicePassword, exit 12. Any other refusal is PasswordChangeRefused,
one line naming the device's own description.

As both clients do, the state is checked first and nothing is asked of a device that is already in it (turning
on an encrypting device, turning off or changing the password of one that does not encrypt): BackupEncryptionState.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phonevault.store.errors import PasswordRefused

from .backup2 import Timeouts, _device_udid, connected, open_link, watched
from .devicelink import CheckedLink
from .errors import (
    BackupEncryptionState,
    DeviceReportedFailure,
    PasswordChangeRefused,
    ProtocolError,
    WrongDevicePassword,
)
from .paths import shown

ERROR_INVALID_PASSWORD = 207  # MBErrorDomain/207: "Invalid password"
DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True, slots=True)
class EncryptionStatus:
    udid: str
    name: str | None
    encrypts: bool  # lockdown's WillEncrypt, read after any change


def backup_encryption_status(
    *, udid: str | None = None, usbmux_address: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> EncryptionStatus:
    """Whether the device encrypts its backups (a backup password is set)."""
    return watched(timeouts, "nothing was changed", lambda watchdog: _run(udid, usbmux_address, None, watchdog))


def set_backup_encryption(
    on: bool,
    password: str,
    *,
    udid: str | None = None,
    usbmux_address: str | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> EncryptionStatus:
    """Turn backup encryption on with the new ``password``, or off (``password`` is then the current one)."""
    if on and not password.strip():
        raise PasswordRefused("an empty backup password protects nothing; choose one")
    request = _Request("turn backup encryption on", None, password) if on else _Request(
        "turn backup encryption off", password, None
    )  # fmt: skip
    return watched(timeouts, "nothing was changed", lambda watchdog: _run(udid, usbmux_address, request, watchdog))


def change_backup_password(
    old: str,
    new: str,
    *,
    udid: str | None = None,
    usbmux_address: str | None = None,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> EncryptionStatus:
    """Change the device's backup password from ``old`` to ``new`` (it must encrypt already)."""
    if not new.strip():
        raise PasswordRefused("an empty backup password protects nothing; choose one")
    request = _Request("change the backup password", old, new)
    return watched(timeouts, "nothing was changed", lambda watchdog: _run(udid, usbmux_address, request, watchdog))


@dataclass(frozen=True, slots=True)
class _Request:
    action: str  # for messages: "turn backup encryption on"
    old: str | None
    new: str | None

    def refusal(self, encrypts: bool) -> str | None:
        """Why not to ask a device that does (not) encrypt, as both clients refuse before asking; None: ask."""
        if self.old is None and encrypts:
            return "backup encryption is already on (change its password with `phonevault device password`)"
        if self.old is not None and not encrypts:
            return "backup encryption is off on this device" + (
                "; turn it on with `phonevault device encryption on`" if self.new is not None else " already"
            )
        return None


async def _run(udid, usbmux_address, request: _Request | None, watchdog) -> EncryptionStatus:
    try:
        async with connected(udid, usbmux_address) as service:
            target = _device_udid(service.lockdown.udid)
            name = service.lockdown.all_values.get("DeviceName")
            encrypts = await _will_encrypt(service.lockdown)
            if request is None:
                return EncryptionStatus(target, name, encrypts)
            if (why := request.refusal(encrypts)) is not None:
                raise BackupEncryptionState(why)
            watchdog.phase("starting MobileBackup2", watchdog.timeouts.setup)
            async with open_link(service, _MessageLink) as dl:
                message: dict[str, Any] = {"MessageName": "ChangePassword", "TargetIdentifier": target}
                if request.old is not None:
                    message["OldPassword"] = request.old
                if request.new is not None:
                    message["NewPassword"] = request.new
                await dl.send_process_message(message)
                # A phone asks its user for the passcode first: as long as a person takes, not a setup step.
                watchdog.phase("waiting for the device to confirm (enter the passcode on it)", watchdog.timeouts.idle)
                await dl.dl_loop(lambda _percent: None)
                watchdog.phase("ending the session", watchdog.timeouts.setup)
            return EncryptionStatus(target, name, await _will_encrypt(service.lockdown))
    except DeviceReportedFailure as e:
        if request is None:  # only a ChangePassword makes the device report a failure
            raise
        said = m.group(1) if (m := re.search(r"'ErrorDescription': '([^']*)'", e.description)) else ""
        if e.code == ERROR_INVALID_PASSWORD:
            raise WrongDevicePassword(request.action, said or "error 207") from None
        raise PasswordChangeRefused(request.action, e.code, said) from None


async def _will_encrypt(lockdown) -> bool:
    value = await lockdown.get_value("com.apple.mobile.backup", "WillEncrypt")
    if value is not None and not isinstance(value, bool):
        raise ProtocolError("lockdownd", f"WillEncrypt is {shown(repr(value)[:40])}, not a boolean")
    return bool(value)


class _MessageLink(CheckedLink):
    """A DeviceLink for an operation that moves no file (ChangePassword): the device's messages are checked as a
    backup's are (`check_message`, every read reported to the watchdog), and a file request is a ProtocolError —
    no local folder exists to answer it from."""

    def __init__(self, service) -> None:
        super().__init__(service, Path("/"))  # the root is only named in pymobiledevice3's log lines
        for name in self._dl_handlers:
            self._dl_handlers[name] = self._refuse

    async def _refuse(self, message: list[Any]) -> None:
        raise ProtocolError("MobileBackup2", f"the device sent {shown(str(message[0])[:60])} during ChangePassword")
