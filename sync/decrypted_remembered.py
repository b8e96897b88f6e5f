"""`phonevault device remember-password`: a device's backup password kept in the vault, sealed by the vault's key, so
that its backups and imports are stored decrypted (sync/decrypted.py) without the password being given each time.

Object: `settings/<device key>/backup-password`, where the device key is the keyed hash of the UDID that names the
device's event log (`events/<device key>/`), so the name shows no UDID. Value: msgpack `[1, password]` sealed with
the vault's master key (AES-256-GCM, ad = the object's name, as event segments are), so it cannot be read without
the vault's password nor moved to another device's name undetected. Written whole (`put`): the last writer wins.
`check` and `prune` do not look under `settings/`; `copy` does not carry it (remember it again in the copy).

What it gives away, beyond `--store-decrypted`: the backup password itself. Whoever has the vault's password can
then also unwrap the keybag's class keys, and with them the keychain items inside keychain-backup.plist (which
`--store-decrypted` alone leaves wrapped). That is why it is a separate, explicit command.

A remembered password that no longer opens a backup (it was changed on the phone since) stores that backup as the
phone sent it, with a problem naming why (the caller's): a scheduled backup is never lost to a stale password.
"""

from __future__ import annotations

import msgpack

from phonevault.store.errors import CorruptObject
from phonevault.store.repository import Repository

FORMAT = 1


def _name(repo: Repository, udid: str) -> str:
    return f"settings/{repo.device_key(udid)}/backup-password"


def remember(repo: Repository, udid: str, password: str) -> None:
    name = _name(repo, udid)
    repo.backend.put(name, repo.key.seal(msgpack.packb([FORMAT, password]), name.encode()))


def forget(repo: Repository, udid: str) -> bool:
    """Remove the remembered password; False if there was none."""
    name = _name(repo, udid)
    if not repo.backend.exists(name):
        return False
    repo.backend.delete(name)
    return True


def any_remembered(repo: Repository) -> bool:
    """Whether any device of the vault has a remembered password (one listing: an import of a folder need not read
    its UDID otherwise)."""
    return any(True for _ in repo.backend.list("settings/"))


def remembered(repo: Repository, udid: str) -> str | None:
    """The device's remembered backup password, None if none is. CorruptObject if the object does not open."""
    name = _name(repo, udid)
    if not repo.backend.exists(name):
        return None
    try:
        fmt, password = msgpack.unpackb(repo.key.open(repo.backend.get(name), name.encode(), name))
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CorruptObject(name, "not a remembered backup password") from None
    if fmt != FORMAT or not isinstance(password, str):
        raise CorruptObject(name, f"a remembered backup password of unknown format {fmt!r}")
    return password


#: The problem a backup names when its device's remembered password opens nothing.
STALE = (
    "the remembered backup password does not open this backup (changed on the phone since?): stored as the phone "
    "sent it; run `phonevault device remember-password` again"
)
