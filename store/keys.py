"""keys/<id>: the master secret wrapped by a password, one object per password.

Format (version 1), plain JSON so a human can see which KDF a key uses:
  {"version": 1, "kdf": "scrypt", "n": N, "r": r, "p": p, "salt": b64, "created": iso, "wrapped": b64}
`wrapped` = nonce || AES-256-GCM(scrypt(password), master secret, ad=b"phonevault/v1/key"). Adding or changing a
password writes or removes one such object; the data is never re-encrypted.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .backends import Backend
from .crypto import NONCE_LEN, MasterKey
from .errors import CorruptObject, PasswordRefused, UnsupportedFormat, WrongPassword

KEY_FORMAT = 1
DEFAULT_SCRYPT_N = 2**15  # ~100 ms and 32 MiB per unlock on a laptop core
_AD = b"phonevault/v1/key"


def _kek(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())


def add_key(backend: Backend, master: MasterKey, password: str, scrypt_n: int = DEFAULT_SCRYPT_N) -> str:
    """Wrap the master secret with a new password; returns the new key's id."""
    if not password.strip():
        raise PasswordRefused()
    salt = os.urandom(16)
    r, p = 8, 1
    nonce = os.urandom(NONCE_LEN)
    wrapped = nonce + AESGCM(_kek(password, salt, scrypt_n, r, p)).encrypt(nonce, master.secret, _AD)
    doc = {
        "version": KEY_FORMAT,
        "kdf": "scrypt",
        "n": scrypt_n,
        "r": r,
        "p": p,
        "salt": base64.b64encode(salt).decode(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wrapped": base64.b64encode(wrapped).decode(),
    }
    key_id = secrets.token_hex(16)
    backend.put_exclusive(f"keys/{key_id}", json.dumps(doc, indent=1).encode())
    return key_id


def _parse(name: str, raw: bytes) -> tuple[bytes, bytes, int, int, int]:
    """(salt, wrapped, n, r, p) of a key file, or CorruptObject / UnsupportedFormat saying what is wrong with it."""
    try:
        doc = json.loads(raw)
        if doc.get("version") != KEY_FORMAT:
            raise UnsupportedFormat(name, doc.get("version"))
        if doc.get("kdf") != "scrypt":  # a newer phonevault's KDF, or one flipped byte: never a format version
            raise CorruptObject(name, f"unknown key derivation {str(doc.get('kdf'))[:40]!r}")
        salt = base64.b64decode(doc["salt"], validate=True)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptObject(name, f"unreadable key file: {e}") from None
    if len(wrapped) != NONCE_LEN + 32 + 16 or not salt or n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise CorruptObject(name, "unreadable key file: its salt, wrapped key or scrypt parameters are out of shape")
    return salt, wrapped, n, r, p


def damaged_keys(backend: Backend) -> list[str]:
    """One line per key file that no password can open any more (damaged, or in a format this version does not
    read). A key file's wrapped secret can only be verified with its own password; its shape can always be."""
    out = []
    for name, _size in sorted(backend.list("keys/")):
        try:
            _parse(name, backend.get(name))
        except (CorruptObject, UnsupportedFormat) as e:
            key_id = name.removeprefix("keys/")
            out.append(f"{e}: that password no longer opens the vault (`phonevault key remove {key_id}`, then "
                       "`key add` a new one)")  # fmt: skip
    return out


def _try_unwrap(name: str, raw: bytes, password: str) -> MasterKey | None:
    salt, wrapped, n, r, p = _parse(name, raw)
    try:
        kek = _kek(password, salt, n, r, p)
    except (ValueError, TypeError) as e:
        raise CorruptObject(name, f"unreadable key file: {e}") from None
    try:
        return MasterKey(AESGCM(kek).decrypt(wrapped[:NONCE_LEN], wrapped[NONCE_LEN:], _AD))
    except InvalidTag:
        return None


def unlock(backend: Backend, password: str) -> tuple[str, MasterKey]:
    """Try every key object; returns (key id, master key) or raises WrongPassword.

    A damaged key object, or one in a format this version does not know, does not stop the others from being
    tried; only when every key object is so is the first one's error raised."""
    damaged: list[CorruptObject | UnsupportedFormat] = []
    for name, _size in sorted(backend.list("keys/")):
        try:
            master = _try_unwrap(name, backend.get(name), password)
        except (CorruptObject, UnsupportedFormat) as e:
            damaged.append(e)
            continue
        if master is not None:
            return name.removeprefix("keys/"), master
    if damaged and len(damaged) == len(list(backend.list("keys/"))):
        raise damaged[0]
    raise WrongPassword(backend.location)


def remove_key(backend: Backend, key_id: str) -> None:
    backend.delete(f"keys/{key_id}")


def change_password(backend: Backend, master: MasterKey, old_key_id: str, new_password: str) -> str:
    """Replace the key `old_key_id` by one for `new_password`; returns the new key's id. The new key is written
    before the old one is removed, so a crash in between leaves both passwords working, never neither."""
    key_id = add_key(backend, master, new_password)
    remove_key(backend, old_key_id)
    return key_id


def list_keys(backend: Backend) -> list[str]:
    """The ids of every key (one per password), sorted."""
    return sorted(name.removeprefix("keys/") for name, _ in backend.list("keys/"))
