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

Reading (the host): `parse_keybag` reads the TLV records (the first UUID is the bag's, each later UUID starts a
class record, as jsharkey13/iphone_backup_decrypt src/iphone_backup_decrypt/google_iphone_dataprotection.py and
matan1008/pyiosbackup pyiosbackup/keybag.py read them); `unlock_class_keys` derives the password key and unwraps
every class key whose WRAP has bit 2 (wrapped by the password; 3 = device and password, both unwrap with it, as
those two readers do); `unwrap_key` unwraps a file's or the Manifest.db's key with the class key its own u32le
prefix names; `decrypt` streams AES-256-CBC and checks the PKCS#7 padding at the end.

What is checked, what is assumed. Checked: every record fits the blob (a truncated keybag is refused, never read
short), integer fields are 4 bytes, the bag is a backup bag (TYPE 1), the KDF costs are sane (a damaged or hostile
DPIC of 4 billion would run for hours), each class key unwraps (RFC 3394's integrity value: a wrong password is
told from a damaged keybag because no class key unwraps at all), each wrapped key is 4 + 40 bytes, ciphertext is
whole 16-byte blocks and its padding is PKCS#7. Assumed (from those two readers, not from Apple): versions 3–5 are
backup keybags, and only a bag with DPSL and DPIC (iOS 10.2 and later) is read; a bag without them (one PBKDF2-SHA1
round, iOS before 10.2) is refused as unsupported. HMCK (a keybag HMAC key) is not checked.

Errors are ValueErrors of this module (KeybagError, PasswordMismatch, UnwrapError, PaddingError); the callers
(sync/encrypted.py) say which snapshot and file they concern.

Only the `cryptography` package does crypto here. Memory: `encrypt` and `decrypt` stream, one piece at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

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


# --------------------------------------------------------------------------------------------------- reading

#: BackupKeyBag VERS values read as backup keybags; others are refused as unknown.
KNOWN_VERSIONS = (3, 4, 5)
KEYBAG_TYPE_BACKUP = 1
WRAP_PASSCODE = 2  # a class record's WRAP bit: its key is wrapped by the password key
WRAPPED_KEY_BYTES = 44  # u32le protection class + a 32-byte key AES-wrapped (40 bytes)
#: The most KDF work a keybag may ask for: real phones use DPIC 10 000 000 and ITER 10 000; a damaged or hostile
#: bag asking for billions would hold the command for hours before any error.
MAX_DPIC = 100_000_000
MAX_ITER = 10_000_000

_INT_TAGS = {b"VERS", b"TYPE", b"WRAP", b"ITER", b"DPWT", b"DPIC", b"CLAS", b"KTYP"}


class KeybagError(ValueError):
    """A BackupKeyBag that cannot be read: damaged (`unsupported` False) or of a kind this module does not read."""

    def __init__(self, reason: str, *, unsupported: bool = False) -> None:
        super().__init__(reason)
        self.unsupported = unsupported


class PasswordMismatch(ValueError):
    """No class key of the keybag unwraps with the key derived from this password: the password is wrong."""


class UnwrapError(ValueError):
    """A wrapped key (a file's EncryptionKey, the ManifestKey) that is malformed or does not unwrap."""


class PaddingError(ValueError):
    """Ciphertext that is not whole AES blocks, or whose PKCS#7 padding is wrong once decrypted."""


@dataclass(frozen=True, slots=True)
class ClassKeyRecord:
    protection_class: int
    wrap: int  # bit 1: wrapped by the device's key, bit 2: by the password key
    key_type: int
    wrapped: bytes  # WPKY
    uuid: bytes = b""


@dataclass(frozen=True, slots=True)
class Keybag:
    version: int
    type: int
    uuid: bytes
    salt: bytes
    iterations: int
    dpsl: bytes
    dpic: int
    classes: tuple[ClassKeyRecord, ...]


def _records(blob: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """(tag, value, offset) of each TLV record; KeybagError where one does not fit."""
    at = 0
    while at < len(blob):
        if len(blob) - at < 8:
            raise KeybagError(f"truncated: {len(blob) - at} stray byte(s) at byte {at}, not a whole record header")
        tag = blob[at : at + 4]
        (length,) = struct.unpack(">I", blob[at + 4 : at + 8])
        if at + 8 + length > len(blob):
            raise KeybagError(
                f"truncated: record {tag!r} at byte {at} claims {length} bytes, {len(blob) - at - 8} remain"
            )
        yield tag, blob[at + 8 : at + 8 + length], at
        at += 8 + length


def parse_keybag(blob: bytes) -> Keybag:
    """The records of a BackupKeyBag, checked as the module docstring says. KeybagError (damaged, or
    `unsupported`: not a backup bag of iOS 10.2 or later)."""
    header: dict[bytes, bytes | int] = {}
    classes: list[dict[bytes, bytes | int]] = []
    for tag, value, at in _records(bytes(blob)):
        if tag in _INT_TAGS:
            if len(value) != 4:
                raise KeybagError(f"record {tag!r} at byte {at} is {len(value)} bytes, not a 4-byte integer")
            value = struct.unpack(">I", value)[0]
        if tag == b"UUID" and b"UUID" in header:
            classes.append({b"UUID": value})  # each later UUID starts a class record
        elif classes:
            if tag in classes[-1]:
                raise KeybagError(f"class record has {tag!r} twice (byte {at})")
            classes[-1][tag] = value
        elif tag not in header:
            header[tag] = value
    if not header:
        raise KeybagError("empty")
    version = header.get(b"VERS")
    if not isinstance(version, int):
        raise KeybagError("no VERS record (truncated?)")
    if version not in KNOWN_VERSIONS:
        raise KeybagError(f"version {version} is unknown (this phonevault reads versions 3 to 5)", unsupported=True)
    if b"TYPE" not in header:
        raise KeybagError("no TYPE record (truncated?)")
    if header[b"TYPE"] != KEYBAG_TYPE_BACKUP:
        raise KeybagError(f"type {header[b'TYPE']!r} is not a backup keybag (1)", unsupported=True)
    if not classes:  # before asking which KDF: a bag cut inside its header lacks DPSL too, and is damage
        raise KeybagError("no class keys (truncated?)")
    if b"DPSL" not in header or b"DPIC" not in header:
        raise KeybagError(
            f"version {version} without DPSL/DPIC: a backup of iOS before 10.2 (one PBKDF2 round), which this "
            "phonevault does not read; it reads encrypted backups of iOS 10.2 and later",
            unsupported=True,
        )
    for tag in (b"SALT", b"ITER", b"DPSL", b"DPIC"):
        if tag not in header:
            raise KeybagError(f"no {tag.decode()} record (truncated?)")
    salt, dpsl, iterations, dpic = header[b"SALT"], header[b"DPSL"], header[b"ITER"], header[b"DPIC"]
    assert isinstance(salt, bytes) and isinstance(dpsl, bytes) and isinstance(iterations, int)
    assert isinstance(dpic, int)
    if not 1 <= iterations <= MAX_ITER or not 1 <= dpic <= MAX_DPIC:
        raise KeybagError(f"KDF rounds ITER {iterations} / DPIC {dpic} are outside any phone's (damaged?)")
    records = []
    seen: set[int] = set()
    for c in classes:
        pclass, wrap, wpky = c.get(b"CLAS"), c.get(b"WRAP"), c.get(b"WPKY")
        if not isinstance(pclass, int) or not isinstance(wrap, int) or not isinstance(wpky, bytes):
            raise KeybagError("a class record lacks CLAS, WRAP or WPKY (truncated?)")
        if pclass in seen:
            raise KeybagError(f"protection class {pclass} is listed twice")
        seen.add(pclass)
        ktyp = c.get(b"KTYP", 0)
        uuid = c[b"UUID"]
        records.append(
            ClassKeyRecord(
                pclass, wrap, ktyp if isinstance(ktyp, int) else 0, wpky, uuid if isinstance(uuid, bytes) else b""
            )
        )
    bag_uuid = header.get(b"UUID", b"")
    return Keybag(
        version, KEYBAG_TYPE_BACKUP, bag_uuid if isinstance(bag_uuid, bytes) else b"", salt, iterations, dpsl, dpic,
        tuple(records),
    )  # fmt: skip


def unlock_class_keys(bag: Keybag, password: str) -> dict[int, bytes]:
    """Every class key the password unwraps, by protection class. PasswordMismatch when none does; KeybagError
    when some do and others do not (the bag is damaged: one password wraps them all)."""
    pkey = password_key(password, bag.dpsl, bag.dpic, bag.salt, bag.iterations)
    keys: dict[int, bytes] = {}
    failed: list[int] = []
    for c in bag.classes:
        if not c.wrap & WRAP_PASSCODE:
            continue  # wrapped by a device's own key: not in reach of a password (and not used for backup files)
        try:
            key = aes_key_unwrap(pkey, c.wrapped)
        except InvalidUnwrap:
            failed.append(c.protection_class)
            continue
        except ValueError as e:  # a WPKY of an impossible length
            raise KeybagError(f"class {c.protection_class}'s wrapped key is malformed ({e})") from None
        if len(key) != 32:
            raise KeybagError(f"class {c.protection_class}'s key is {len(key)} bytes, not an AES-256 key")
        keys[c.protection_class] = key
    if failed and not keys:
        raise PasswordMismatch("no class key unwraps with this password")
    if failed:
        raise KeybagError(f"class key(s) {', '.join(map(str, failed))} do not unwrap with the password that unwraps "
                          "the others")  # fmt: skip
    if not keys:
        raise KeybagError("no class key is wrapped by the password")
    return keys


def unwrap_key(class_keys: Mapping[int, bytes], wrapped: bytes) -> bytes:
    """The 32-byte key inside an EncryptionKey / ManifestKey value, unwrapped with the key of the protection class
    its u32le prefix names (the key's own record, not the MBFile's ProtectionClass). UnwrapError says why not."""
    if len(wrapped) != WRAPPED_KEY_BYTES:
        raise UnwrapError(f"the wrapped key is {len(wrapped)} bytes, not {WRAPPED_KEY_BYTES}")
    (pclass,) = struct.unpack("<I", wrapped[:4])
    class_key = class_keys.get(pclass)
    if class_key is None:
        raise UnwrapError(f"its protection class {pclass} has no key in the keybag that the password unwraps")
    try:
        return aes_key_unwrap(class_key, bytes(wrapped[4:]))
    except (InvalidUnwrap, ValueError):
        raise UnwrapError(f"the wrapped key does not unwrap with the class {pclass} key (damaged)") from None


def decrypt(key: bytes, pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The inverse of `encrypt`, streamed. The last block's padding is checked when the input ends, so a consumer
    must not take what it got as the file until the iterator finished without PaddingError."""
    dec = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * 16)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    total = 0
    for piece in pieces:
        total += len(piece)
        if out := unpad.update(dec.update(piece)):
            yield out
    if total % 16:
        raise PaddingError(f"{total} bytes are not whole 16-byte AES blocks")
    try:
        yield unpad.update(dec.finalize()) + unpad.finalize()
    except ValueError:
        raise PaddingError("its PKCS#7 padding is wrong once decrypted (a wrong key, or damaged bytes)") from None


def decrypt_bytes(key: bytes, data: bytes | bytearray | memoryview, piece: int = 1 << 20) -> bytearray:
    """`decrypt` of one buffer into one buffer (Manifest.db): read in 1 MiB slices, so beside the input only the
    output is held."""
    view = memoryview(data)
    out = bytearray()
    try:
        # Each slice copied (1 MiB at a time): a view of it left in a traceback would pin `data`, which the caller
        # empties once it is decrypted, or fails to.
        for plain in decrypt(key, (bytes(view[i : i + piece]) for i in range(0, len(view), piece))):
            out += plain
    finally:
        view.release()
    return out
