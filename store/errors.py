"""Typed errors of the store room. Each carries what was wrong and where; the CLI maps them to one line and an exit code."""

from __future__ import annotations


class PhonevaultError(Exception):
    """Base of every expected failure. `exit_code` follows restic's documented codes."""

    exit_code = 1


class RepositoryNotFound(PhonevaultError):
    exit_code = 10

    def __init__(self, location: str, reason: str = "no phonevault repository here") -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location


class RepositoryExists(PhonevaultError):
    def __init__(self, location: str) -> None:
        super().__init__(f"{location}: a repository already exists here")
        self.location = location


class WrongPassword(PhonevaultError):
    exit_code = 12

    def __init__(self, location: str) -> None:
        super().__init__(f"{location}: wrong password (no key in keys/ opens with it)")


class CorruptObject(PhonevaultError):
    """An object of the repository failed authentication, decoding or its content hash."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"corrupt object {name}: {reason}")
        self.name = name
        self.reason = reason


class MissingObject(PhonevaultError):
    def __init__(self, name: str, reason: str = "not found") -> None:
        super().__init__(f"missing object {name}: {reason}")
        self.name = name


class ObjectExists(PhonevaultError):
    """put_exclusive lost: another writer created the name first."""

    def __init__(self, name: str) -> None:
        super().__init__(f"object {name} already exists")
        self.name = name


class ConcurrentCommit(PhonevaultError):
    """Another writer committed to the same device log first; this commit was not made (its data is kept and reused)."""

    exit_code = 11

    def __init__(self, device: str) -> None:
        super().__init__(f"another backup of device {device} committed first; nothing was lost, run it again")
        self.device = device


class SnapshotNotFound(PhonevaultError):
    def __init__(self, ref: str, reason: str = "no such snapshot") -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref


class DeviceNotFound(PhonevaultError):
    def __init__(self, ref: str, reason: str = "no such device in this vault") -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref


class PathNotFound(PhonevaultError):
    def __init__(self, path: str, where: str) -> None:
        # A phone names its own rows: a path with a newline or a terminal escape is shown quoted, on one line.
        super().__init__(f"{path if path.isprintable() else repr(path)}: not in {where}")
        self.path = path


class UnsupportedFormat(PhonevaultError):
    def __init__(self, what: str, version: object) -> None:
        super().__init__(f"{what}: format version {version!r} is not supported by this phonevault")


class PackPruned(PhonevaultError):
    """A pack this commit depends on was deleted by a prune that ran meanwhile. Nothing was committed and nothing
    stored is lost; running the backup again stores the missing data anew."""

    def __init__(self, pack: str) -> None:
        super().__init__(f"pack {pack[:16]} that this backup depends on was pruned meanwhile; run it again")
        self.pack = pack


class CacheCorrupt(PhonevaultError):
    """The local cache (never the vault) is damaged or does not match the vault; it is rebuilt from the vault."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"local cache {path}: {reason} (the vault is not affected; the cache is rebuilt)")
        self.path = path
        self.reason = reason


class UnsafePath(PhonevaultError):
    """A path named by a backup folder, a Manifest.db or a device would land outside its target; refused."""

    def __init__(self, path: str, target: str, reason: str = "it would land outside the target") -> None:
        super().__init__(f"refusing path {path!r} under {target}: {reason}")
        self.path = path
        self.target = target


class PasswordRefused(PhonevaultError):
    """A new vault password that would protect nothing (empty or only whitespace)."""

    def __init__(self, reason: str = "an empty password protects nothing; choose one") -> None:
        super().__init__(f"password refused: {reason}")


class ReadOnlyVault(PhonevaultError):
    """A command that only reads the vault tried to change it (put, put_exclusive or delete). Nothing was written;
    the command holds a read-only handle precisely so that such a slip fails loudly instead of changing the vault."""

    def __init__(self, location: str, operation: str, name: str) -> None:
        super().__init__(f"{location}: opened read-only; refusing to {operation} {name}")
        self.location = location
        self.operation = operation
        self.name = name


class UnsupportedBackend(PhonevaultError):
    """A vault location names storage this phonevault cannot reach (an unknown scheme, or one not built yet)."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"{location}: {reason}")
        self.location = location


class SnapshotsKept(PhonevaultError):
    """`forget` was named snapshots it did not forget (pinned, or a device's last one); the others were forgotten."""

    def __init__(self, kept: list[str]) -> None:
        super().__init__(f"not forgotten: {'; '.join(kept)}")
        self.kept = kept


class SnapshotsPinned(PhonevaultError):
    """Forgetting every snapshot of a device that has pinned ones: a pin says "keep this", so it is not overridden
    without being asked to (unpin first, or unpin and forget in one step)."""

    def __init__(self, device: str, pinned: list[str]) -> None:
        super().__init__(
            f"{device}: {len(pinned)} pinned snapshot(s) ({', '.join(pinned)}); unpin them first, or add --unpin "
            "to forget them too; nothing was forgotten"
        )
        self.pinned = pinned


class NotConfirmed(PhonevaultError):
    """A destructive command that asks first was not confirmed (declined, or no terminal to ask on)."""

    def __init__(self, what: str, how: str) -> None:
        super().__init__(f"{what}: {how}; nothing was changed")


class LogUnreadable(PhonevaultError):
    """Prune could not read a whole device log, so it cannot know what the unread part references: it deletes
    nothing until the log reads again."""

    def __init__(self, damage: list[str]) -> None:
        more = f" and {len(damage) - 1} more" if len(damage) > 1 else ""
        super().__init__(
            f"prune deletes nothing while a device log cannot be read ({damage[0]}{more}); `phonevault check` "
            "names the damage"
        )
        self.damage = damage


class IndexIncomplete(PhonevaultError):
    """Live snapshots need blobs that no readable index object locates (an index object lost or damaged): their
    pack may look like a crash leftover, so prune deletes nothing until the index is repaired from pack headers."""

    def __init__(self, blobs: int) -> None:
        super().__init__(
            f"prune deletes nothing: {blobs} blob(s) that snapshots need are in no readable index object; run "
            "`phonevault check --repair-index` (it rebuilds the index from the packs' own headers), then prune again"
        )
        self.blobs = blobs


class BucketNotFound(RepositoryNotFound):
    """An S3 vault location names a bucket the server does not have (`phonevault init` creates it)."""

    def __init__(self, location: str, bucket: str) -> None:
        super().__init__(location, f"bucket {bucket!r} does not exist (`phonevault init` creates it)")
        self.bucket = bucket


class StorageAccessDenied(PhonevaultError):
    """The object store refused the credentials (unknown key, wrong secret) or this key's rights."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(
            f"{location}: access denied ({reason}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
        self.location = location


class ConditionalWritesUnsupported(PhonevaultError):
    """The object store ignores `If-None-Match: *`, so two writers appending to one event log could overwrite each
    other's commit: the vault is not opened for writing there."""

    def __init__(self, location: str) -> None:
        super().__init__(
            f"{location}: the server does not honour conditional writes (If-None-Match: *), which several writers "
            "need to append safely; refusing to write to this vault"
        )
        self.location = location


class StorageUnavailable(OSError):
    """The object store did not answer usefully: unreachable, a reset connection, throttling (429/503), a 5xx.

    An OSError, as a failing disk is, so that reading code does not take it for damage in the vault, and the CLI
    prints it as one line (`filename: strerror`). `transient`: worth trying again (the retrying wrapper does); an
    endpoint that never answered since the backend was opened is not — it is a wrong address, said at once."""

    def __init__(self, errno: int, message: str, where: str, *, transient: bool) -> None:
        super().__init__(errno, message, where)
        self.transient = transient
