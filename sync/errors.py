"""Typed errors of the sync room (backup folders, plists, Manifest.db, devices, the emulator)."""

from __future__ import annotations

from phonevault.store.errors import PhonevaultError


class BackupFolderInvalid(PhonevaultError):
    """What cannot be a backup at all: not a folder, no Manifest.db, an unreadable catalog."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: not a usable MobileSync backup folder: {reason}")
        self.path = path
        self.reason = reason


class ManifestInvalid(PhonevaultError):
    """Manifest.db (or Manifest.plist/Info.plist/Status.plist) could not be parsed."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SourceIncomplete(PhonevaultError):
    """An import or a device backup stored everything that was there, but some source data was missing, unreadable
    or malformed; each problem is in `problems` (exit 3). `source` names the folder or device, if given."""

    exit_code = 3

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(
            f"{where}{len(problems)} problem(s) in the source (named above); everything that was there is in the "
            "snapshot"
        )
        self.problems = problems
        self.source = source


class FoldersNotImported(PhonevaultError):
    """A Backup/ folder of several devices: the device folders in `failed` could not be imported (each named where
    it failed), the other `imported` ones are in the vault. A source with unreadable parts, so exit 3."""

    exit_code = 3

    def __init__(self, source: str, failed: list[str], imported: int) -> None:
        super().__init__(
            f"{source}: {len(failed)} of {len(failed) + imported} device folders not imported (named above: "
            f"{', '.join(failed)}); the others are in the vault"
        )
        self.failed = failed
        self.imported = imported


class CatalogProblems(PhonevaultError):
    """A snapshot's Manifest.db has rows that cannot be used (undecodable, a fileID listed twice); everything else
    was listed or extracted, the rows are named in `problems` (exit 3)."""

    exit_code = 3

    def __init__(self, snapshot: str, problems: list[str]) -> None:
        super().__init__(f"snapshot {snapshot}: {len(problems)} unusable row(s) in its Manifest.db (named above)")
        self.problems = problems


class EncryptedBackup(PhonevaultError):
    """The phone encrypted this backup, so its Manifest.db (the catalog) is ciphertext: browsing, diffing by name
    and extracting need the backup password, which is not supported yet. Export and restore work as usual."""

    def __init__(self, snapshot: str) -> None:
        super().__init__(
            f"snapshot {snapshot}: the phone encrypted this backup; browsing its files needs the backup password, "
            "which phonevault does not support yet (export and restore work as usual)"
        )
        self.snapshot = snapshot


class ExtractIncomplete(PhonevaultError):
    """Extract wrote every file it could; the ones in `problems` were not (missing from the snapshot, an unsafe
    path, an unusable catalog row, a write that failed). `extracted` is what was written (exit 3)."""

    exit_code = 3

    def __init__(self, problems: list[str], extracted: list) -> None:
        super().__init__(f"{len(problems)} file(s) not extracted (named above); the other {len(extracted)} were")
        self.problems = problems
        self.extracted = extracted


class ExportIncomplete(PhonevaultError):
    """Export wrote a backup folder without the snapshot's paths in `problems` (each refused: it would land outside
    the folder, or not readable back from the vault); everything else was exported (exit 3)."""

    exit_code = 3

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            f"{len(problems)} path(s) of the snapshot not exported (named above); everything else was exported"
        )
        self.problems = problems


class StrictRefused(PhonevaultError):
    """--strict: some files of the snapshot cannot be written out (named in `problems`: most often damage in the
    vault), so nothing was; the target is as it was (exit 1)."""

    def __init__(self, problems: list[str], action: str) -> None:
        super().__init__(
            f"{len(problems)} file(s) cannot be {action} (named above); with --strict nothing was {action}"
        )
        self.problems = problems


class RestoreIncomplete(PhonevaultError):
    """The device restored what the vault could send; the files in `problems` cannot be read back from the vault
    and were answered with a file error (exit 3)."""

    exit_code = 3

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} file(s) not restored (named above); everything else was")
        self.problems = problems


class TargetConflict(PhonevaultError):
    """Extract or export would replace or merge something in its target; refused before anything is written."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}; nothing was written")
        self.path = path
        self.reason = reason


class DeviceError(PhonevaultError):
    """A device (or the emulator) failed, refused or sent something malformed."""


class DeviceNotConnected(DeviceError):
    def __init__(self, reason: str = "no iPhone/iPad found through usbmuxd") -> None:
        super().__init__(reason)


class DeviceDisconnected(DeviceError):
    def __init__(self, reason: str = "the device disconnected during the operation") -> None:
        super().__init__(reason)


class DeviceTimeout(DeviceError):
    """The device (or usbmuxd) stopped answering for longer than the host waits; nothing was committed."""


class ProtocolError(DeviceError):
    """A malformed or unexpected usbmux/lockdown/DeviceLink message."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason


class DeviceReportedFailure(DeviceError):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"the device reported failure {code}: {description}")
        self.code = code
        self.description = description


class RestoreRefused(DeviceError):
    """The device would not restore without the files in `problems`, which cannot be read back from the vault
    (answered with a file error), and ended the restore with an error (exit 1)."""

    def __init__(self, problems: list[str], description: str) -> None:
        super().__init__(
            f"the device refused to restore a backup missing {len(problems)} damaged file(s) (named above): "
            f"{description}"
        )
        self.problems = problems


class DeviceLimitExceeded(ProtocolError):
    """The device asked for more than any real backup needs (files, copies, moves); the backup is refused."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__("DeviceLink", f"{what} (limit {limit:,}); a hostile or broken device, backup refused")
        self.what = what
        self.limit = limit


class LegacyManifestInvalid(ManifestInvalid):
    """A file list of a backup made before iOS 10 (Manifest.mbdb, an .mdinfo) that cannot be read. `offset` is the
    byte where reading stopped, None when the file is refused as a whole. A ManifestInvalid, so every caller that
    refuses an unreadable catalog refuses this one the same way."""

    def __init__(self, path: str, reason: str, offset: int | None = None) -> None:
        super().__init__(path, reason)
        self.offset = offset


# --- encrypted backups read with the phone's backup password (sync/encrypted.py) -----------------------------------


class BackupPasswordNeeded(EncryptedBackup):
    """An encrypted snapshot was to be browsed, but no backup password was given and there is no terminal to ask on."""

    def __init__(self, snapshot: str) -> None:
        PhonevaultError.__init__(
            self,
            f"snapshot {snapshot}: the phone encrypted this backup; browsing it needs its backup password "
            "(--backup-password, PHONEVAULT_BACKUP_PASSWORD or PHONEVAULT_BACKUP_PASSWORD_FILE, or a terminal to ask on)",
        )
        self.snapshot = snapshot


class EncryptionUnsupported(PhonevaultError):
    """An encrypted snapshot whose keybag this phonevault cannot open with a password (iOS before 10.2, an unknown
    keybag version or type). Raised only once a password is in hand, so a reader that goes on without the catalog
    when none is given (EncryptedBackup) still says so when one is. Export and restore work as usual."""

    def __init__(self, snapshot: str, reason: str) -> None:
        super().__init__(f"snapshot {snapshot}: {reason} (export and restore of it work as usual)")
        self.snapshot = snapshot
        self.reason = reason


class WrongBackupPassword(PhonevaultError):
    """The backup password unwraps none of the snapshot keybag's class keys (exit 12, as a wrong vault password)."""

    exit_code = 12

    def __init__(self, snapshot: str) -> None:
        super().__init__(f"snapshot {snapshot}: wrong backup password (it unwraps no key of this backup's keybag)")
        self.snapshot = snapshot


class KeybagDamaged(PhonevaultError):
    """Manifest.plist's BackupKeyBag (or the ManifestKey it should unwrap) cannot be read: truncated, a record of
    the wrong size, a class key that does not unwrap while the others do."""

    def __init__(self, snapshot: str, reason: str) -> None:
        super().__init__(f"snapshot {snapshot}: Manifest.plist's BackupKeyBag is damaged: {reason}")
        self.snapshot = snapshot
        self.reason = reason


class ManifestUndecryptable(ManifestInvalid):
    """The ManifestKey unwrapped, yet Manifest.db does not decrypt with it into an SQLite database."""


class FileUndecryptable(PhonevaultError):
    """One file of an encrypted snapshot: its wrapped key does not unwrap, or its bytes do not decrypt (padding,
    length). Extract and export --decrypt name it and go on with the others."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot be decrypted: {reason}")
        self.path = path
        self.reason = reason


# --- a device's backup encryption: ChangePassword, and restoring an encrypted backup (sync/encryption.py) ------------


class WrongDevicePassword(PhonevaultError):
    """The device refused the backup password it was given (MBErrorDomain 207: a ChangePassword's old password, or a
    restore's): exit 12, as a wrong vault password. (A wrong password found against a snapshot's own keybag, before
    the device is asked, is WrongBackupPassword.)"""

    exit_code = 12

    def __init__(self, action: str, said: str) -> None:
        super().__init__(f"wrong backup password: the device refused to {action} with it ({said})")


class PasswordChangeRefused(DeviceError):
    """The device answered a ChangePassword with an error other than a wrong password (exit 1)."""

    def __init__(self, action: str, code: int, description: str) -> None:
        super().__init__(f"the device refused to {action}: {description or 'no reason given'} (error {code})")
        self.code = code
        self.description = description


class BackupEncryptionState(DeviceError):
    """The device is already in the state asked for, or not in one the request needs; nothing was sent to it."""
