"""The emulator process: a loopback TCP listener speaking usbmuxd, one thread per connection.

Room: the server. Invariant: one bad connection never takes the emulator down — every connection runs in its
own thread, and anything it raises is logged and ends only that connection. `stop()` closes the listener and
every open connection, then joins their threads.

Clients find it through `USBMUXD_SOCKET_ADDRESS=127.0.0.1:<port>` (pmd3 `MuxConnection._resolve_usbmux_address`,
lum `connect_usbmuxd_socket`).
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from types import TracebackType

from . import usbmux
from .backup2 import Report
from .backupkeys import DEFAULT_KDF_ITERATIONS
from .device import Device, Fault
from .phone import SyntheticPhone
from .wire import Link

log = logging.getLogger(__name__)

DEFAULT_SIZE = 64 * 2**20


class Emulator:
    """A simulated iPhone behind a usbmuxd on 127.0.0.1. Start it, point a client at `.address`.

    ``backup_password`` sets the phone up with backup encryption on (kept in ``data_dir`` across restarts, as the
    phone keeps it; ChangePassword over MobileBackup2 changes it); ``kdf_iterations`` is its keybag's DPIC.
    ``many_files`` (a count) makes it a heavy Messages user's phone: that many small plists besides its media
    (sync/emulator/phone.py), for the benchmarks' device path at scale.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        seed: int = 1,
        size: int = DEFAULT_SIZE,
        day: int = 0,
        port: int = 0,
        fault: Fault | None = None,
        backup_password: str | None = None,
        kdf_iterations: int = DEFAULT_KDF_ITERATIONS,
        many_files: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._device = Device(
            self.data_dir, SyntheticPhone(seed=seed, size=size, many_files=many_files or False), fault, kdf_iterations
        )
        self._device.content.ensure_day(day)
        if backup_password is not None and not self._device.backup_keys.verify(backup_password):
            # A phone set up with this backup password (kept across restarts: the same password changes nothing).
            self._device.backup_keys.set_password(backup_password)
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._links: dict[Link, threading.Thread] = {}
        self._mutex = threading.Lock()
        self._stopping = threading.Event()

    # -- identity and state

    @property
    def udid(self) -> str:
        return self._device.udid

    @property
    def device_dir(self) -> Path:
        """The folder holding the phone's current content (a MobileSync backup folder)."""
        return self._device.content.folder

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the emulator is not started")
        return self._listener.getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def fault(self) -> Fault | None:
        return self._device.fault

    @fault.setter
    def fault(self, fault: Fault | None) -> None:
        self._device.fault = fault

    @property
    def will_encrypt(self) -> bool:
        """Whether the phone encrypts its backups (a backup password is set): lockdown's `WillEncrypt`."""
        return self._device.backup_keys.encrypts

    def backup_password_is(self, password: str) -> bool:
        """Whether ``password`` is the phone's backup password (checked against its keybag, never stored)."""
        return self._device.backup_keys.verify(password)

    @property
    def reports(self) -> list[Report]:
        """Every MobileBackup2 operation so far, oldest first (the device's own counters)."""
        return self._device.history()

    def set_day(self, day: int) -> None:
        """Move the phone to `day` (waits for a running backup or restore to finish)."""
        self._device.content.ensure_day(day)

    # -- lifecycle

    def start(self) -> Emulator:
        listener = socket.create_server(("127.0.0.1", self._requested_port), reuse_port=False)
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="emulator-accept", daemon=True)
        self._accept_thread.start()
        log.info("emulator %s listening on %s (data %s)", self.udid, self.address, self.data_dir)
        return self

    def serve_forever(self) -> None:
        if self._accept_thread is None:
            self.start()
        assert self._accept_thread is not None
        self._accept_thread.join()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._mutex:
            links = list(self._links.items())
        for link, _ in links:
            link.abort()
        for _, thread in links:
            thread.join(timeout=5)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- connections

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                if not self._stopping.is_set():
                    log.exception("emulator: accept failed")
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Link(sock, f"{peer[0]}:{peer[1]}")
            thread = threading.Thread(target=self._serve_link, args=(link,), name=f"emulator-{peer[1]}", daemon=True)
            with self._mutex:
                self._links[link] = thread
            thread.start()

    def _serve_link(self, link: Link) -> None:
        try:
            usbmux.serve(link, self._device)
        except Exception:
            # A bug in one connection's handling must not stop the emulator; the traceback is for us.
            log.exception("emulator: connection %s failed", link.peer)
        finally:
            link.close()
            with self._mutex:
                self._links.pop(link, None)


def serve(
    port: int,
    data_dir: Path,
    *,
    day: int = 0,
    size: int = DEFAULT_SIZE,
    seed: int = 1,
    many_files: int = 0,
) -> None:
    """Run an emulator in the foreground until interrupted (the `phonevault emulator serve` command)."""
    emulator = Emulator(data_dir, seed=seed, size=size, day=day, port=port, many_files=many_files).start()
    print(f"USBMUXD_SOCKET_ADDRESS={emulator.address}  udid={emulator.udid}", flush=True)
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
