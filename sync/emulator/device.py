"""The emulated phone: identity, content on disk, pairing, and the port table usbmuxd and lockdownd share.

Room: the device. Invariant: what the phone "has" is exactly one MobileSync backup folder,
`DATA/device/<udid>/`, produced by the project's one generator (`SyntheticPhone.write_backup`) or by the last
restore; it only changes under `content.lock`, which every backup/restore holds for its whole run, so a
backup never sees a half-written day and `set_day` waits for a running backup.

Service ports work like lockdownd's: StartService opens a one-shot port number, and the next usbmux Connect
to it gets that service (with TLS first when EnableServiceSSL was true). Port 62078 is always lockdownd.
"""

from __future__ import annotations

import logging
import os
import plistlib
import shutil
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phonevault.sync.manifest import read_manifest_db

from . import backup2, hostile, lockdown, pairing, services
from .backupkeys import DEFAULT_KDF_ITERATIONS, BackupKeys
from .phone import SyntheticPhone
from .usbmux import LOCKDOWN_PORT, PortHandler
from .wire import Link

log = logging.getLogger(__name__)

DEVICE_ID = 1
FIRST_SERVICE_PORT = 49152
MAX_PENDING_PORTS = 64
RESTORED = "restored"


@dataclass(frozen=True, slots=True)
class Fault:
    """Misbehaviour to inject, for tests of the host side."""

    disconnect_after_upload_bytes: int | None = None  # drop the link mid-backup after this many body bytes
    fail_with_code: int | None = None  # end every operation with this ErrorCode (e.g. 208, device locked)
    bad_upload_path: str | None = None  # also upload a file to this host path (e.g. "../evil")
    hostile: str | None = None  # one behaviour of `hostile.BEHAVIOURS`: a device that breaks the protocol on purpose


class Content:
    """`DATA/device/<udid>/`: the phone's files as a backup folder, at a generated day or as last restored."""

    def __init__(self, data_dir: Path, phone: SyntheticPhone) -> None:
        self.phone = phone
        self.root = data_dir / "device"
        self.folder = self.root / phone.udid
        self.lock = threading.RLock()
        self._marker = self.root / "day"  # the day the folder was generated at, or "restored"

    def ensure_day(self, day: int) -> None:
        with self.lock:
            if (
                self._marker.exists()
                and self._marker.read_text() == str(day)
                and (self.folder / "Manifest.db").exists()
            ):
                return
            self.root.mkdir(parents=True, exist_ok=True)
            self.phone.write_backup(self.root, day)
            self._marker.write_text(str(day))

    def replace(self, staged: Path) -> None:
        """Make `staged` (a complete folder on the same filesystem) the phone's content, atomically enough:
        the old folder is renamed aside before the new one is renamed in, then deleted."""
        with self.lock:
            old = self.root / f".replaced-{uuid.uuid4().hex}"
            if self.folder.exists():
                os.rename(self.folder, old)
            os.rename(staged, self.folder)
            self._marker.write_text(RESTORED)
            shutil.rmtree(old, ignore_errors=True)


class Device:
    """Everything the protocol layers ask of the phone (usbmux `MuxDevice`, lockdown `LockdownDevice`)."""

    device_id = DEVICE_ID

    def __init__(
        self,
        data_dir: Path,
        phone: SyntheticPhone,
        fault: Fault | None = None,
        kdf_iterations: int = DEFAULT_KDF_ITERATIONS,
    ) -> None:
        self.data_dir = data_dir
        self.phone = phone
        self.udid: str = phone.udid
        self.fault = fault
        self.pairing = pairing.load_or_create(data_dir)
        self.tls: ssl.SSLContext = pairing.server_context(self.pairing, data_dir)
        self.buid = self.pairing.system_buid
        self.content = Content(data_dir, phone)
        self.backup_keys = BackupKeys(data_dir, phone.seed, kdf_iterations)
        self.afc = services.AfcStore()
        self.reports: list[backup2.Report] = []
        self._ports: dict[int, str] = {}
        self._next_port = FIRST_SERVICE_PORT
        self._mutex = threading.Lock()
        self._services: dict[str, tuple[bool, Callable[[Link], None]]] = {
            # Real lockdownd turns TLS on for mobilebackup2 (lid #1540); the side services run in plaintext.
            "com.apple.mobilebackup2": (True, lambda link: backup2.serve(link, self)),
            "com.apple.mobile.notification_proxy": (False, services.serve_notification_proxy),
            "com.apple.afc": (False, lambda link: services.serve_afc(link, self.afc)),
            "com.apple.mobile.installation_proxy": (
                False,
                lambda link: services.serve_installation_proxy(link, self.applications),
            ),
            "com.apple.springboardservices": (False, services.serve_springboard),
        }

    # -- usbmuxd

    def pair_record(self) -> bytes:
        return plistlib.dumps(self.pairing.host_record(self.phone.lockdown_values().get("WiFiAddress", "")))

    def open_port(self, port: int) -> PortHandler | None:
        if port == LOCKDOWN_PORT:
            return lambda link: lockdown.serve(link, self)
        with self._mutex:
            name = self._ports.pop(port, None)
        if name is None:
            return None
        use_ssl, handler = self._services[name]

        def run(link: Link) -> None:
            if use_ssl:
                try:
                    link.start_tls(self.tls)
                except (ssl.SSLError, OSError) as e:
                    log.warning("%s %s: TLS handshake failed: %s", name, link.peer, e)
                    return
            handler(link)

        return run

    # -- lockdownd

    def lockdown_values(self) -> dict[str, Any]:
        values = dict(self.phone.lockdown_values())
        values.setdefault("UniqueDeviceID", self.udid)
        values["DevicePublicKey"] = self.pairing.device_public_key
        # pmd3 `get_will_encrypt` and lid (`WillEncrypt` before a backup) read it: whether a backup password is set.
        values["com.apple.mobile.backup"] = {"WillEncrypt": self.backup_keys.encrypts}
        return hostile.lockdown_values(self, values)

    def start_service(self, name: str) -> tuple[int, bool] | None:
        if name not in self._services:
            return None
        with self._mutex:
            port = self._next_port
            self._next_port = FIRST_SERVICE_PORT + (port + 1 - FIRST_SERVICE_PORT) % 16384
            self._ports[port] = name
            while len(self._ports) > MAX_PENDING_PORTS:
                self._ports.pop(next(iter(self._ports)))
        return port, self._services[name][0]

    # -- content, for the services

    def applications(self) -> list[dict[str, Any]]:
        """User apps = the AppDomain-<bundle> domains of the phone's own catalog."""
        with self.content.lock:
            domains = {e.domain for e in read_manifest_db(self.content.folder / "Manifest.db")}
        bundles = sorted(d.removeprefix("AppDomain-") for d in domains if d.startswith("AppDomain-"))
        return [{"CFBundleIdentifier": b, "ApplicationType": "User"} for b in bundles]

    def scratch_dir(self) -> Path:
        path = self.data_dir / "tmp" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def record(self, report: backup2.Report) -> None:
        with self._mutex:
            self.reports.append(report)

    def history(self) -> list[backup2.Report]:
        with self._mutex:
            return list(self.reports)
