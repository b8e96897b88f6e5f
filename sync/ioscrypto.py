"""iOS backup encryption (iOS ≥ 10.2): keybag, wrapped keys, encrypted files. The one module that owns it: the
emulator (sync/emulator/phone.py) writes with it, and the host reads what a phone wrote with it.

Formats:
- BackupKeyBag (Manifest.plist): TLV records, a 4-byte ASCII tag + u32 big-endian length + value. Header VERS,
  TYPE, UUID, HMCK, WRAP, SALT, ITER, DPWT, DPIC, DPSL; then per protection class UUID, CLAS, WRAP (2: wrapped by
  the password key), KTYP, WPKY (the class key, RFC 3394 AES key wrap).
- Password key: PBKDF2-HMAC-SHA256(password, DPSL, DPIC rounds), then PBKDF2-HMAC-SHA1(that, SALT, ITER rounds),
  32 bytes. It unwraps every WPKY.
- A wrapped key (MBFile EncryptionKey, Manifest.plist ManifestKey): u32 little-endian protection class + the
  32-byte key AES-wrapped by that class's key (40 bytes).
- File bodies and Manifest.db: AES-256-CBC, zero IV, PKCS#7 padding — always 1..16 bytes longer than the plain.

Only the `cryptography` package does crypto here. Memory: `encrypt` streams, one piece at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

#: Protection classes a backup keybag carries (class 4 wraps the ManifestKey).
KEYBAG_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)


def password_key(password: str, dpsl: bytes, dpic: int, salt: bytes, iterations: int) -> bytes:
    """The key that unwraps keybag class keys: PBKDF2-SHA256 over DPSL/DPIC, then PBKDF2-SHA1 over SALT/ITER."""
    k1 = PBKDF2HMAC(hashes.SHA256(), 32, dpsl, dpic).derive(password.encode())
    return PBKDF2HMAC(hashes.SHA1(), 32, salt, iterations).derive(k1)


def backup_keybag(
    wrap_key: bytes,
    *,
    bag_uuid: bytes,
    hmck: bytes,
    salt: bytes,
    iterations: int,
    dpsl: bytes,
    dpic: int,
    class_uuids: Mapping[int, bytes],
    class_keys: Mapping[int, bytes],
) -> bytes:
    """A BackupKeyBag whose HMCK and class keys (`KEYBAG_CLASSES`, in order) are wrapped by ``wrap_key``."""
    tlv = [
        (b"VERS", struct.pack(">I", 4)),
        (b"TYPE", struct.pack(">I", 1)),
        (b"UUID", bag_uuid),
        (b"HMCK", aes_key_wrap(wrap_key, hmck)),
        (b"WRAP", struct.pack(">I", 0)),
        (b"SALT", salt),
        (b"ITER", struct.pack(">I", iterations)),
        (b"DPWT", struct.pack(">I", 1)),
        (b"DPIC", struct.pack(">I", dpic)),
        (b"DPSL", dpsl),
    ]
    for c in KEYBAG_CLASSES:
        tlv += [
            (b"UUID", class_uuids[c]),
            (b"CLAS", struct.pack(">I", c)),
            (b"WRAP", struct.pack(">I", 2)),
            (b"KTYP", struct.pack(">I", 0)),
            (b"WPKY", aes_key_wrap(wrap_key, class_keys[c])),
        ]
    return b"".join(tag + struct.pack(">I", len(v)) + v for tag, v in tlv)


def wrapped_key(protection_class: int, class_key: bytes, key: bytes) -> bytes:
    """An EncryptionKey / ManifestKey value: ``key`` wrapped by the key of ``protection_class``."""
    return struct.pack("<I", protection_class) + aes_key_wrap(class_key, key)


def encrypt(key: bytes, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """AES-256-CBC, zero IV, PKCS#7 padding: how iOS encrypts backup files and Manifest.db."""
    enc = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * 16)).encryptor()
    pad = padding.PKCS7(128).padder()
    for piece in pieces:
        yield enc.update(pad.update(piece))
    yield enc.update(pad.finalize()) + enc.finalize()


def encrypted_size(size: int) -> int:
    """The length of `encrypt`'s output for ``size`` plain bytes."""
    return (size // 16 + 1) * 16
