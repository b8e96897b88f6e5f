"""Device backup and restore over MobileBackup2, with pymobiledevice3 as the client.

The flows follow pymobiledevice3's `Mobilebackup2Service.backup/restore` (services/mobilebackup2.py) step by step —
DeviceLink handshake, notification proxy + AFC sync lock, Info.plist from installation_proxy/springboard/AFC,
Status.plist and an empty Manifest.plist for a full backup, the `Backup` request, the DL loop — but the folder is
`VaultDeviceLink`, a staged snapshot. The snapshot is committed only after the device reports success
(ErrorCode 0); a disconnect, a device error or a malformed message leaves the vault exactly as it was (the packs
already written are reused by the next backup).

Nothing here writes a local file: a backup streams into the store, a restore streams out of a snapshot, and the
one device-side path written is the constant `/iTunesRestore/RestoreApplications.plist`. The device's UDID names
its folder in every DeviceLink path (and in an export), so a backup refuses a UDID that is not one safe folder
name (`paths.safe_component`) before anything is stored, and a restore refuses such a source. An `IsEncrypted`
that is not a boolean is never guessed at: a backup decides it from the Manifest.db (a database or not) and names
the problem; a restore uses what the vault decided when the snapshot was stored.

A device is not trusted to answer, nor to answer sensibly. Every wait on it is bounded (`Timeouts`): the setup
(usbmuxd, lockdownd, the service handshakes, the sync lock, Info.plist) as a whole, each silence of the device
inside the backup or restore, and each step of hanging up after a failure; a device that stays silent past a bound
ends the operation with DeviceTimeout. A usbmuxd reply longer than MAX_USBMUX_REPLY is refused before anything is
allocated for it (pymobiledevice3 would allocate whatever length the reply claims). Whatever pymobiledevice3 raises
on a malformed reply becomes one typed error of one line.

Memory bound of `backup`: the staged tree spilling, sealed, past SPILL_ENTRIES entries (store/spilled.py: that many
entries, one shard merged, a 2 MiB Bloom filter), the writer's packs (store/writer.py, store/blobsink.py: a pack
of small plists is cut at PACK_BLOBS blobs, ~4 MB, and let go once written), the cache's index pages mapped by
≤ TRIM_LOOKUPS blob lookups (~150 KB each; at the commit, by one shard's, store/spilled.py), and once committed the catalog's parse of the Manifest.db (one shard of rows, SQLite's page
cache and a few sealed blocks of the image SQLite reads, sync/sealeddb.py); none of it grows with the number of
files. An incremental backup starts from the parent's shards, each read from the vault when the spilling tree needs
it. Not yet bounded: a backup stored decrypted lists every staged entry once (sync/decrypted.py), and an encrypted
backup's catalog is parsed whole (sync/catalog.py).
"""

from __future__ import annotations

import asyncio
import plistlib
import re
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from pymobiledevice3 import usbmux
from pymobiledevice3.exceptions import (
    ConnectionFailedError,
    ConnectionTerminatedError,
    NoDeviceConnectedError,
    NotEnoughDiskSpaceError,
    NotPairedError,
    PyMobileDevice3Exception,
)
from pymobiledevice3.exceptions import ProtocolError as Pmd3ProtocolError
from pymobiledevice3.lockdown import create_using_usbmux
from pymobiledevice3.services.afc import AfcService
from pymobiledevice3.services.mobilebackup2 import SUPPORTED_VERSIONS, Mobilebackup2Service
from pymobiledevice3.services.notification_proxy import NotificationProxyService

from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.spilled import SpillingTree
from phonevault.store.trees import FileEntry, decode_shard, read_root
from phonevault.store.writer import SnapshotWriter

from .catalog import load_catalog
from .decrypted import Holding, decrypt_staged, device_meta
from .decrypted_remembered import STALE, remembered
from .devicelink import ACTIVITY, CheckedLink, Progress, VaultDeviceLink
from .encrypted import BackupPassword
from .errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotConnected,
    DeviceReportedFailure,
    DeviceTimeout,
    ManifestInvalid,
    ProtocolError,
    WrongBackupPassword,
)
from .manifest import check_manifest_db
from .paths import shown, unsafe_reason
from .plists import read_info_plist, read_manifest_plist
from .records import BackupMeta, device_record

T = TypeVar("T")
L = TypeVar("L", bound=CheckedLink)

# usbmuxd replies are device lists and pair records (kilobytes); anything longer is garbage, not a reply.
MAX_USBMUX_REPLY = 1 << 20
# Blob lookups between two unmaps of the cache's pages during a backup (the writer's TRIM_LOOKUPS, store/writer.py,
# is 256): a device uploads small files one after another, each a lookup that maps ~150 KB of the index (the
# kernel's fault-around), so at 256 the index pages mapped between unmaps were the largest part that still grew
# with the files (19 MB of data.mdb at the peak of a 160 000-file backup).
TRIM_LOOKUPS = 64


async def _recv_usbmux_reply(sock) -> bytes:
    """pymobiledevice3's usbmuxd reply reader, with the claimed length checked before it is read: its own passes
    the claim to `sock_recv`, which allocates that many bytes first (4 GiB for a hostile 0xFFFFFFF0)."""
    header = await usbmux.MuxConnection._recv_exactly(sock, 4)
    (size,) = struct.unpack("<L", header)
    if not 16 <= size <= MAX_USBMUX_REPLY:  # 16: the reply header itself
        raise ProtocolError("usbmuxd", f"refusing a reply of {size} bytes (limit {MAX_USBMUX_REPLY})")
    return header + await usbmux.MuxConnection._recv_exactly(sock, size - 4)


# pymobiledevice3 is pinned; every usbmuxd reply it reads, for any caller, goes through this one static method.
usbmux.MuxConnection._recv_packet = staticmethod(_recv_usbmux_reply)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the host waits on a device, in seconds, before it gives up with DeviceTimeout."""

    setup: float = 120.0  # usbmuxd, lockdownd, handshakes, the sync lock, Info.plist (a phone with many apps)
    idle: float = 900.0  # one silence inside a backup or restore (a phone preparing its snapshot says nothing)
    cleanup: float = 10.0  # each step of hanging up once the operation has failed or timed out


class _Watchdog:
    """Runs one device operation and ends it if the device stays silent past the current bound.

    The operation names what it waits for (`phase`) and reports every read from the device (`poke`); when the
    bound passes, the operation's task is cancelled, and cancelled again every `cleanup` seconds while its hang-up
    steps (unlocking the sync lock, closing services) wait on the same silent device."""

    def __init__(self, timeouts: Timeouts, outcome: str) -> None:
        self.timeouts = timeouts
        self.outcome = outcome  # what giving up means, for the error
        self._loop = asyncio.get_running_loop()
        self.what, self.limit = "connecting to usbmuxd and lockdownd", timeouts.setup
        self.deadline = self._loop.time() + self.limit
        self.expired: str | None = None

    def phase(self, what: str, limit: float) -> None:
        if self.expired is None:
            self.what, self.limit = what, limit
            self.poke()

    def poke(self) -> None:
        if self.expired is None:
            self.deadline = self._loop.time() + self.limit

    async def run(self, operation):
        ACTIVITY.set(self.poke)  # the operation's task starts with a copy of this context
        task = asyncio.ensure_future(operation)
        try:
            while not task.done():
                left = self.deadline - self._loop.time()
                if left > 0:
                    await asyncio.wait([task], timeout=left)
                    continue
                if self.expired is None:
                    self.expired = f"the device sent nothing for {self.limit:g} s while {self.what}"
                task.cancel()
                self.deadline = self._loop.time() + self.timeouts.cleanup
        except asyncio.CancelledError:  # the caller is interrupted (Ctrl-C): the operation ends with it
            task.cancel()
            await asyncio.wait([task], timeout=self.timeouts.cleanup)
            raise
        if self.expired is not None and (task.cancelled() or task.exception() is not None):
            raise DeviceTimeout(f"{self.expired}; gave up, {self.outcome}") from None
        return task.result()


def watched(timeouts: Timeouts, outcome: str, operation: Callable[[_Watchdog], Coroutine[Any, Any, T]]) -> T:
    """Run one device operation in a fresh event loop, under its watchdog."""

    async def run() -> T:
        watchdog = _Watchdog(timeouts, outcome)
        return await watchdog.run(operation(watchdog))

    return asyncio.run(run())


@dataclass(slots=True)
class DeviceBackupResult:
    udid: str
    name: str | None
    snapshot: SnapshotRecord
    full: bool
    files_received: int
    bytes_received: int
    problems: list[str] = field(default_factory=list)


@asynccontextmanager
async def open_link(service: Mobilebackup2Service, make: Callable[[Any], L]) -> AsyncIterator[L]:
    """MobileBackup2 connected, a DeviceLink made by `make` over it, versions exchanged and Hello said; the link
    is disconnected afterwards (a device already gone is no error then)."""
    await service.connect()
    dl = make(service._service)
    await dl.version_exchange()
    await _hello(dl)
    try:
        yield dl
    finally:
        with suppress(ConnectionTerminatedError, OSError):
            await dl.disconnect()


class _VaultBackupService(Mobilebackup2Service):
    """pymobiledevice3's service with the folder replaced by the vault (its `device_link` builds a folder link)."""

    @asynccontextmanager
    async def vault_link(self, **kwargs) -> AsyncIterator[VaultDeviceLink]:
        async with open_link(self, lambda service: VaultDeviceLink(service, **kwargs)) as dl:
            yield dl

    @asynccontextmanager
    async def session(self, dl: VaultDeviceLink) -> AsyncIterator[AfcService]:
        async with (
            NotificationProxyService(self.lockdown) as np,
            AfcService(self.lockdown) as afc,
            self._backup_lock(afc, np),
        ):
            await self._observe_backup_notifications(np)
            task = asyncio.create_task(self._log_backup_notifications(np))
            try:
                yield afc
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await task


async def _hello(dl: VaultDeviceLink) -> None:
    """MobileBackup2's Hello, checked field by field (pymobiledevice3 `assert`s, which names nothing)."""
    await dl.send_process_message({"MessageName": "Hello", "SupportedProtocolVersions": SUPPORTED_VERSIONS})
    reply = await dl.receive_message()
    body = reply[1] if reply[0] == "DLMessageProcessMessage" else None
    if not isinstance(body, dict):
        raise ProtocolError("MobileBackup2", f"Hello answered with {shown(repr(reply)[:120])}")
    if body.get("ErrorCode") != 0:
        raise ProtocolError("MobileBackup2", f"Hello refused (ErrorCode {shown(repr(body.get('ErrorCode'))[:40])})")
    if body.get("ProtocolVersion") not in SUPPORTED_VERSIONS:
        version = shown(repr(body.get("ProtocolVersion"))[:40])
        raise ProtocolError("MobileBackup2", f"no common protocol version (the device chose {version})")


def _device_udid(udid: object) -> str:
    """The UDID lockdownd reports, which names the backup folder in every DeviceLink path: one safe folder name."""
    why = unsafe_reason(udid, component=True) if isinstance(udid, str) else "it is not a string"
    if why is not None:
        raise ProtocolError("lockdownd", f"its UniqueDeviceID {shown(repr(udid)[:80])} cannot name a folder ({why})")
    return udid


def _first_line(e: BaseException) -> str:
    """An exception's text as one line: pymobiledevice3 appends a second paragraph asking for bug reports."""
    return shown((str(e).strip().splitlines() or [""])[0])


def _translate(e: BaseException) -> PhonevaultError:
    if isinstance(e, PhonevaultError):
        return e
    if isinstance(e, NotEnoughDiskSpaceError):
        return DeviceReportedFailure(105, _first_line(e))
    if isinstance(e, ConnectionTerminatedError | ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError):
        return DeviceDisconnected(f"the device disconnected during the operation ({type(e).__name__})")
    if isinstance(e, PyMobileDevice3Exception) and "reported an error" in str(e):
        return DeviceReportedFailure(_error_code(str(e)), _first_line(e))
    if isinstance(e, Pmd3ProtocolError):
        return ProtocolError("the device", _first_line(e))
    if isinstance(e, NotPairedError):
        return DeviceError("lockdownd opened no session: the device is not paired with this computer, or the TLS "
                           "handshake failed")  # fmt: skip
    if isinstance(e, OSError | ConnectionFailedError):
        return DeviceDisconnected(f"lost the connection to the device: {_first_line(e)}")
    return DeviceError(f"{type(e).__name__}: {_first_line(e)}")


def _on_this_computer(e: BaseException) -> bool:
    """Whether `e` is an OSError raised while the vault was being read or written (a frame of phonevault.store is
    on its way up): the vault's disk, which the CLI names with the object (`packs/…: Input/output error`). A
    socket to the device never raises through the store."""
    if not isinstance(e, OSError):
        return False
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("phonevault.store."):
            return True
        tb = tb.tb_next
    return False


def _error_code(text: str) -> int:
    m = re.search(r"'ErrorCode': (\d+)", text)
    return int(m.group(1)) if m else -1


async def _lockdown(udid: str | None, usbmux_address: str | None):
    try:
        devices = await usbmux.list_devices(usbmux_address=usbmux_address)
    except (ConnectionFailedError, OSError, NoDeviceConnectedError) as e:
        where = usbmux_address or "system socket"
        raise DeviceNotConnected(f"cannot reach usbmuxd ({where}): {_first_line(e)}") from None
    serials = [d.serial for d in devices]
    if not serials:
        raise DeviceNotConnected()
    if udid is None and len(set(serials)) > 1:
        raise DeviceNotConnected(
            f"{len(set(serials))} devices connected; choose one with --udid ({', '.join(serials)})"
        )
    if udid is not None and udid not in serials:
        raise DeviceNotConnected(f"device {udid} is not connected (connected: {', '.join(serials)})")
    return await create_using_usbmux(serial=udid or serials[0], usbmux_address=usbmux_address, autopair=False)


@asynccontextmanager
async def connected(udid: str | None, usbmux_address: str | None) -> AsyncIterator[_VaultBackupService]:
    """Lockdown + the MobileBackup2 service for one operation. Whatever goes wrong inside (a disconnect, a device
    error, a malformed message) leaves as one typed PhonevaultError; the caller commits nothing."""
    try:
        lockdown = await _lockdown(udid, usbmux_address)
    except PhonevaultError:
        raise
    except NotPairedError as e:
        raise _translate(e) from None
    except Exception as e:
        where = f"usbmuxd/lockdownd at {usbmux_address or 'the system socket'}"
        raise ProtocolError(where, f"malformed or refused reply ({type(e).__name__}: {_first_line(e)})") from None
    service = _VaultBackupService(lockdown)
    try:
        yield service
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException as e:  # noqa: BLE001 - every failure becomes one typed error
        if _on_this_computer(e):
            raise  # the vault's own disk failed (I/O error, full): that is not the device, and not the cable
        raise _translate(e) from None
    finally:
        with suppress(Exception):
            await service.close()
        with suppress(Exception):
            await lockdown.close()


def find_devices(usbmux_address: str | None = None, timeouts: Timeouts = Timeouts()) -> list[str]:
    """The UDIDs usbmuxd lists; [] when it cannot be reached, answers nonsense or does not answer in time."""

    async def go() -> list[str]:
        try:
            devices = await asyncio.wait_for(usbmux.list_devices(usbmux_address=usbmux_address), timeouts.setup)
        except Exception:  # a usbmuxd that cannot be reached, answers nonsense or stays silent lists no device
            return []
        return [d.serial for d in devices]

    return asyncio.run(go())


def backup_device(
    repo: Repository,
    *,
    udid: str | None = None,
    usbmux_address: str | None = None,
    full: bool = False,
    progress: Progress | None = None,
    on_start: Callable[[str, str | None], None] | None = None,
    timeouts: Timeouts = Timeouts(),
    store_decrypted: BackupPassword | None = None,
) -> DeviceBackupResult:
    """`store_decrypted`: an encrypted backup is stored decrypted (sync/decrypted.py) once the device has sent it;
    a wrong password commits nothing."""
    return watched(
        timeouts,
        "nothing was committed",
        lambda watchdog: _backup(repo, udid, usbmux_address, full, progress, on_start, watchdog, store_decrypted),
    )


async def _backup(
    repo, udid, usbmux_address, full, progress, on_start, watchdog: _Watchdog, store_decrypted=None
) -> DeviceBackupResult:
    writer: SnapshotWriter | None = None
    tree: SpillingTree | None = None
    holding: Holding | None = None
    try:  # however the backup ends, the writer is closed: a failure releases its writers/ marker at once
        async with connected(udid, usbmux_address) as service:
            udid = _device_udid(service.lockdown.udid)
            if on_start:
                on_start(udid, service.lockdown.all_values.get("DeviceName"))
            full = full or repo.view(repo.device_key(udid), refresh=True).head is None
            from_memory = store_decrypted is None and (password := remembered(repo, udid)) is not None
            if from_memory:  # `device remember-password`: this device's backups are stored decrypted
                store_decrypted = BackupPassword(password)
            # The device's order is not shard by shard: the staged tree spills, sealed, past a bound (store/spilled.py),
            # and starts from the parent's shards read from the vault one at a time, not from the whole parent tree.
            writer = SnapshotWriter(repo, udid, DeviceRecord(), incremental=False)
            writer.TRIM_LOOKUPS = TRIM_LOOKUPS
            writer.tree = tree = SpillingTree(repo.cache, base=None if full else _parent_shards(repo, writer))
            holding = Holding(writer, repo.cache.spool()) if store_decrypted is not None else None
            watchdog.phase("starting MobileBackup2", watchdog.timeouts.setup)
            link = {"repo": repo, "udid": udid, "writer": writer, "progress": progress, "holding": holding}
            async with service.vault_link(**link) as dl:
                watchdog.phase("taking the sync lock and listing the apps", watchdog.timeouts.setup)
                async with service.session(dl) as afc:
                    info = await service.init_mobile_backup_factory_info(afc)
                    dl.put_bytes("Info.plist", plistlib.dumps(info))
                    if full or not dl.has("Status.plist"):
                        dl.put_bytes("Status.plist", _new_status(full))
                    if full:
                        dl.put_bytes("Manifest.plist", b"")  # pmd3's signal for a full backup: an empty Manifest.plist
                    await dl.send_process_message({"MessageName": "Backup", "TargetIdentifier": udid})
                    watchdog.phase("backing up", watchdog.timeouts.idle)
                    await dl.dl_loop(lambda _percent: None)
                    watchdog.phase("ending the backup session", watchdog.timeouts.setup)
        writer.drop_nonempty_dirs()
        device = read_info_plist(dl.read("Info.plist") or b"", "Info.plist")
        writer.info = device_record(device)
        problems = list(dl.problems)
        encrypted = _encrypted(dl.read("Manifest.plist"), lambda: dl.read("Manifest.db"), problems)
        dec = None
        if encrypted and store_decrypted is not None:
            try:
                dec = decrypt_staged(writer, dl.read, store_decrypted, udid, holding)
            except WrongBackupPassword:
                if not from_memory:
                    raise  # given for this backup: nothing is committed
                problems.append(STALE)  # remembered, and changed on the phone since: the backup is not lost
                holding.resolve(None)
        elif holding is not None:
            holding.resolve(None)  # the phone did not encrypt: what was held is stored as it was sent
        problems += dec.problems if dec is not None else ()
        meta = BackupMeta(
            encrypted=encrypted, ios_version=device.ios_version, full=full, problems=len(problems),
            **device_meta(writer.state, dec),
        )  # fmt: skip
        snap = writer.commit(f"device:{udid}", meta=meta.encode())
        repo.cache.trim()  # the cache pages the commit mapped, before the catalog is parsed
        if not encrypted:
            with suppress(PhonevaultError):  # committed already; a catalog problem shows up at `ls`
                catalog = load_catalog(repo, snap)  # so ls/extract/diff of this backup start at once
                problems += [p.message for p in catalog.problems]
        return DeviceBackupResult(udid, device.name, snap, full, dl.files_received, dl.bytes_received, problems)
    finally:
        if holding is not None:
            holding.close()
        if writer is not None:
            writer.close()
        if tree is not None:
            tree.close()


def _parent_shards(repo: Repository, writer: SnapshotWriter) -> dict[str, Callable[[], list[FileEntry]]]:
    """What reads each shard of the backup's parent (its staged tree's starting content), one shard at a time."""
    if writer.parent is None:
        return {}
    return {
        ref.shard: partial(lambda node: decode_shard(repo.get_blob(node), f"tree {node.hex()[:16]}"), ref.node)
        for ref in read_root(writer.parent.tree, repo.get_blob)
    }


def _encrypted(manifest_plist: bytes | None, manifest_db: Callable[[], bytes | None], problems: list[str]) -> bool:
    """Whether the phone encrypted this backup: Manifest.plist's IsEncrypted when it is a boolean, else whether
    the Manifest.db (in memory) fails to open as a database, the problem named either way."""
    flag: bool | None = False
    if manifest_plist:
        try:
            plist = read_manifest_plist(manifest_plist, "Manifest.plist")
        except ManifestInvalid as e:
            problems.append(str(e))
        else:
            problems += plist.problems
            flag = plist.is_encrypted
    if flag is not None:
        return flag
    try:
        check_manifest_db(manifest_db() or b"", "Manifest.db")
    except ManifestInvalid:
        problems.append("Manifest.db is encrypted (not a database): stored as it is, not browsable")
        return True
    problems.append("Manifest.db is a plain database: the backup is taken as not encrypted by the phone")
    return False


def _new_status(full: bool) -> bytes:
    return plistlib.dumps(
        {
            "BackupState": "new",
            "Date": datetime.now(UTC).replace(tzinfo=None),
            "IsFullBackup": full,
            "Version": "3.3",
            "SnapshotState": "finished",
            "UUID": str(uuid.uuid4()).upper(),
        },
        fmt=plistlib.FMT_BINARY,
    )
