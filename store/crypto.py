"""Keys and sealing: the only place that touches key material.

A repository has one random 32-byte master secret. Independent subkeys are derived from it with HKDF-SHA256 (the
info string names each): the AES-256-GCM encryption key, the BLAKE3 key for blob ids (so nobody without the key can
probe the repository for a known file), the BLAKE3 key for object names (device log names never reveal a UDID),
and the local cache's own pair (`CacheKey`: an AES-256-GCM key for its values and a BLAKE3 key for its LMDB keys),
so nothing sealed in the cache can pass for a vault object or the reverse.

Sealed format (version 1): nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16). The associated data
binds a sealed object to where it belongs (a blob to its id, an event segment to its name), so objects cannot be
swapped around undetected. All primitives come from `cryptography` and `blake3`; nothing here is hand-rolled.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CacheCorrupt, CorruptObject

NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
ID_LEN = 32


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class MasterKey:
    """The unwrapped master secret and its subkeys. Never written anywhere unwrapped."""

    __slots__ = ("secret", "_aead", "_aes", "_id_key", "_name_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("master secret must be 32 bytes")
        self.secret = secret
        enc_key = _derive(secret, b"phonevault/v1/encryption")
        self._aead = AESGCM(enc_key)
        self._aes = algorithms.AES(enc_key)  # the same key for `seal_flagged`'s streaming form
        self._id_key = _derive(secret, b"phonevault/v1/blob-id")
        self._name_key = _derive(secret, b"phonevault/v1/object-name")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(32))

    def blob_id(self, data: bytes | memoryview) -> bytes:
        """Keyed BLAKE3 of a blob's plaintext: its content address."""
        return blake3.blake3(data, key=self._id_key).digest()

    def name_hash(self, text: str) -> str:
        """A stable, keyed, non-reversible name for something private (a device UDID)."""
        return blake3.blake3(text.encode(), key=self._name_key).hexdigest()[:32]

    def seal(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), ad)

    def seal_flagged(self, flag: bytes, payload: bytes | memoryview, ad: bytes) -> bytearray:
        """`seal(flag + payload, ad)`, byte for byte the same format, without building `flag + payload`: GCM encrypts
        it in two updates straight into the one output buffer. For large payloads (a media chunk), where the
        concatenation and the separate nonce join were two more copies into fresh memory; a small one is cheaper
        through `seal` (one AESGCM call against a cipher context built per call)."""
        nonce = os.urandom(NONCE_LEN)
        n = len(flag) + len(payload)
        # update_into wants block size - 1 (15) bytes of room past what it writes; the tag's 16 bytes give it.
        out = bytearray(NONCE_LEN + n + TAG_LEN)
        out[:NONCE_LEN] = nonce
        enc = Cipher(self._aes, modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(ad)
        with memoryview(out) as view:
            at = NONCE_LEN + enc.update_into(flag, view[NONCE_LEN:])
            at += enc.update_into(payload, view[at:])
        enc.finalize()
        if at != NONCE_LEN + n:  # GCM is a stream mode: every update writes all it is given
            raise RuntimeError(f"AES-GCM wrote {at - NONCE_LEN} of {n} bytes")
        out[at:] = enc.tag
        return out

    def cache_key(self) -> CacheKey:
        return CacheKey(self.secret)

    def open(self, sealed: bytes | memoryview, ad: bytes, name: str) -> bytes:
        """The plaintext of `seal(plaintext, ad)`; CorruptObject naming `name` if it is short or does not
        authenticate. Read in place (`open_view`): copying `sealed` into bytes first bought nothing."""
        return self.open_view(sealed, ad, name)

    def open_into(
        self, sealed: bytes | bytearray | memoryview, ad: bytes, name: str, out: bytearray | memoryview
    ) -> int:
        """`open(sealed, ad, name)` decrypted into `out[:n]` instead of fresh memory; returns n (= len(sealed) -
        OVERHEAD). `out` needs n + 15 bytes: GCM's update_into wants a block less one of room past what it writes
        (ValueError if shorter). For a reader that opens blob after blob (a large file's chunks): one buffer reused,
        where `open` made two fresh copies per blob (the joined ciphertext and the plaintext), which glibc then kept
        in its heaps. On CorruptObject `out[:n]` holds unauthenticated bytes: the caller must not use them."""
        n = len(sealed) - OVERHEAD
        if n < 0:
            raise CorruptObject(name, f"too short to be sealed ({len(sealed)} bytes)")
        if len(out) < n + 15:
            raise ValueError(f"open_into needs {n + 15} bytes of room, has {len(out)}")
        with memoryview(sealed) as src, memoryview(out) as dst:
            dec = Cipher(self._aes, modes.GCM(bytes(src[:NONCE_LEN]))).decryptor()
            dec.authenticate_additional_data(ad)
            wrote = dec.update_into(src[NONCE_LEN : NONCE_LEN + n], dst)
            try:
                dec.finalize_with_tag(bytes(src[NONCE_LEN + n :]))
            except InvalidTag:
                raise CorruptObject(name, "authentication failed (damaged or not from this repository)") from None
        if wrote != n:  # GCM is a stream mode: every update writes all it is given
            raise RuntimeError(f"AES-GCM wrote {wrote} of {n} bytes")
        return n

    def open_view(self, sealed: bytes | bytearray | memoryview, ad: bytes, name: str) -> bytes:
        """`open(sealed, ad, name)`, reading `sealed` where it is (a slice of a ranged read) without copying it into
        bytes first. One AESGCM call, so cheaper than `open_into` for a small blob (a cipher context per call costs
        more than the copy it saves there)."""
        with memoryview(sealed) as view:
            if len(view) < OVERHEAD:
                raise CorruptObject(name, f"too short to be sealed ({len(view)} bytes)")
            try:
                return self._aead.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], ad)
            except InvalidTag:
                raise CorruptObject(name, "authentication failed (damaged or not from this repository)") from None

    def seal_buffer(self, plaintext: bytes | bytearray | memoryview, ad: bytes) -> bytearray:
        """`seal(plaintext, ad)`, byte for byte the same format, in one output buffer: AES-GCM writes ciphertext and
        tag straight after the nonce, and reads `plaintext` where it is. `seal` copies a buffer into bytes first and
        then joins the nonce to the ciphertext, two copies of the whole object (`copy` re-seals every chunk)."""
        nonce = os.urandom(NONCE_LEN)
        out = bytearray(NONCE_LEN + len(plaintext) + TAG_LEN)
        out[:NONCE_LEN] = nonce
        with memoryview(out) as view:
            self._aead.encrypt_into(nonce, plaintext, ad, view[NONCE_LEN:])
        return out


class CacheKey:
    """The local cache's keys, derived from the master secret and never stored: values are sealed (same format as
    above) with their own AES-256-GCM key, and LMDB keys are keyed BLAKE3 hashes of `<db> 0x00 <natural key>`, so
    the cache file shows no path, UDID or name and a lookup needs the key."""

    __slots__ = ("_aead", "_hash_key")

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(_derive(secret, b"phonevault/v1/cache-encryption"))
        self._hash_key = _derive(secret, b"phonevault/v1/cache-key")

    def key(self, db: bytes, natural: bytes, length: int = ID_LEN) -> bytes:
        return blake3.blake3(db + b"\0" + natural, key=self._hash_key).digest(length)

    def hasher(self, db: bytes) -> Callable[[bytes], bytes]:
        """`key(db, ·)` as one call, for the hot path (a stat lookup per file of an unchanged re-import)."""
        prefix, hash_key, b3 = db + b"\0", self._hash_key, blake3.blake3
        return lambda natural: b3(prefix + natural, key=hash_key).digest()

    def seal(self, plaintext: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, ad)

    def open(self, sealed: bytes, ad: bytes, where: str) -> bytes:
        """Raises CacheCorrupt (never CorruptObject: this is the cache, not the vault)."""
        try:  # on the hot path of every cache read: no length check first, a short value fails in decrypt
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], ad)
        except (InvalidTag, ValueError):
            raise CacheCorrupt(where, "a value fails authentication (damaged, or moved under another key)") from None


def content_hash(data: bytes | memoryview) -> str:
    """Unkeyed BLAKE3 hex: names packs by their bytes so `check --read-data` can verify them without a key."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > 8 << 20 else 1).hexdigest()


def content_hasher() -> blake3.blake3:
    """`content_hash` fed piece by piece (`update`, then `hexdigest`): a pack written as it fills (store/packs.py)."""
    return blake3.blake3()
