"""sync/ioscrypto.py's reading side against its writing side: keybag wrap -> unwrap, file encrypt -> decrypt ->
re-encrypt bit-exact, and every damaged input refused with the module's own error, never read short."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.ioscrypto import (
    KEYBAG_CLASSES,
    KeybagError,
    PaddingError,
    PasswordMismatch,
    UnwrapError,
    backup_keybag,
    decrypt,
    decrypt_bytes,
    encrypt,
    encrypted_size,
    parse_keybag,
    password_key,
    unlock_class_keys,
    unwrap_key,
    wrapped_key,
)

keys32 = st.binary(min_size=32, max_size=32)
passwords = st.text(min_size=1, max_size=24)


def make_bag(password: str, class_keys: dict[int, bytes], salt: bytes = b"s" * 20, dpsl: bytes = b"d" * 20) -> bytes:
    dpic, iterations = 10, 2  # the format, not the cost, is under test
    return backup_keybag(
        password_key(password, dpsl, dpic, salt, iterations),
        bag_uuid=b"u" * 16,
        hmck=b"h" * 40,
        salt=salt,
        iterations=iterations,
        dpsl=dpsl,
        dpic=dpic,
        class_uuids={c: bytes([c]) * 16 for c in KEYBAG_CLASSES},
        class_keys=class_keys,
    )


@given(password=passwords, seed=st.binary(min_size=11, max_size=11), salt=st.binary(min_size=20, max_size=20))
def test_keybag_wrap_then_unwrap_gives_the_class_keys(password, seed, salt):
    class_keys = {c: bytes([seed[c - 1]]) * 16 + os.urandom(16) for c in KEYBAG_CLASSES}
    bag = parse_keybag(make_bag(password, class_keys, salt=salt))
    assert (bag.version, bag.type, bag.salt, bag.iterations, bag.dpic) == (4, 1, salt, 2, 10)
    assert [c.protection_class for c in bag.classes] == list(KEYBAG_CLASSES)
    assert unlock_class_keys(bag, password) == class_keys


@given(password=passwords, other=passwords)
def test_another_password_unwraps_nothing(password, other):
    class_keys = {c: os.urandom(32) for c in KEYBAG_CLASSES}
    bag = parse_keybag(make_bag(password, class_keys))
    if other == password:
        assert unlock_class_keys(bag, other) == class_keys
    else:
        with pytest.raises(PasswordMismatch):
            unlock_class_keys(bag, other)


@given(key=keys32, pclass=st.sampled_from(KEYBAG_CLASSES))
def test_wrapped_key_unwraps_with_its_class_key(key, pclass):
    class_keys = {c: os.urandom(32) for c in KEYBAG_CLASSES}
    wrapped = wrapped_key(pclass, class_keys[pclass], key)
    assert len(wrapped) == 44
    assert unwrap_key(class_keys, wrapped) == key
    bad = bytearray(wrapped)
    bad[10] ^= 1
    with pytest.raises(UnwrapError, match="does not unwrap"):
        unwrap_key(class_keys, bytes(bad))
    with pytest.raises(UnwrapError, match="has no key"):
        unwrap_key({c: k for c, k in class_keys.items() if c != pclass}, wrapped)
    with pytest.raises(UnwrapError, match="not 44"):
        unwrap_key(class_keys, wrapped[:-1])


@given(key=keys32, data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=4))
def test_file_encrypt_decrypt_reencrypt_is_bit_exact(key, data, cuts):
    def pieces(buf: bytes):
        edges = sorted({0, len(buf), *(c for c in cuts if c < len(buf))})
        return [buf[a:b] for a, b in zip(edges, edges[1:], strict=False)] or [b""]

    cipher = b"".join(encrypt(key, iter(pieces(data))))
    assert len(cipher) == encrypted_size(len(data))
    plain = b"".join(decrypt(key, pieces(cipher)))
    assert plain == data
    assert b"".join(encrypt(key, iter([plain]))) == cipher  # the cipher is deterministic given the key
    assert decrypt_bytes(key, cipher, piece=48) == data


@given(key=keys32, data=st.binary(min_size=1, max_size=200))
def test_a_wrong_key_or_cut_ciphertext_is_a_padding_error_not_garbage(key, data):
    cipher = b"".join(encrypt(key, iter([data])))
    with pytest.raises(PaddingError, match="whole 16-byte"):
        b"".join(decrypt(key, [cipher[:-1]]))
    with pytest.raises(PaddingError):
        b"".join(decrypt(key, [b""]))
    # The last block decrypted with another key: padding is right by chance about once in 256; never silently.
    other = bytes(b ^ 0xFF for b in key)
    try:
        plain = b"".join(decrypt(other, [cipher]))
    except PaddingError:
        return
    assert plain != data


def test_padding_that_is_wrong_is_refused():
    key = bytes(range(32))
    # A last block whose plaintext ends in 0x00 (no valid PKCS#7 pad), made with the encryptor of the raw cipher.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    cipher = enc.update(b"A" * 15 + b"\x00") + enc.finalize()
    with pytest.raises(PaddingError, match="padding is wrong"):
        b"".join(decrypt(key, [cipher]))
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    cipher = enc.update(b"A" * 13 + b"\x01\x03\x03") + enc.finalize()  # claims 3 bytes of pad, one is not 3
    with pytest.raises(PaddingError):
        b"".join(decrypt(key, [cipher]))


@given(cut=st.integers(1, 2000))
def test_a_truncated_keybag_is_refused_never_read_short(cut):
    blob = make_bag("pw", {c: bytes(32) for c in KEYBAG_CLASSES})
    cut = cut % len(blob)
    try:
        bag = parse_keybag(blob[:cut])
    except KeybagError as e:
        assert not e.unsupported, e  # damage, never taken for an older iOS or another kind of bag
        return
    # Cut exactly between records: what is left is read as what it is, and every class it lists unwraps.
    assert len(bag.classes) < len(KEYBAG_CLASSES)
    unlock_class_keys(bag, "pw")


def _with_record(blob: bytes, tag: bytes, value: bytes) -> bytes:
    """The keybag with the first record `tag` given another value."""
    out, at = bytearray(), 0
    done = False
    while at < len(blob):
        t, (n,) = blob[at : at + 4], struct.unpack(">I", blob[at + 4 : at + 8])
        v = blob[at + 8 : at + 8 + n]
        if t == tag and not done:
            v, done = value, True
        out += t + struct.pack(">I", len(v)) + v
        at += 8 + n
    return bytes(out)


def _without(blob: bytes, *tags: bytes) -> bytes:
    out, at = bytearray(), 0
    while at < len(blob):
        t, (n,) = blob[at : at + 4], struct.unpack(">I", blob[at + 4 : at + 8])
        if t not in tags:
            out += blob[at : at + 8 + n]
        at += 8 + n
    return bytes(out)


def test_unknown_versions_and_old_ios_keybags_are_refused_as_unsupported():
    blob = make_bag("pw", {c: bytes(32) for c in KEYBAG_CLASSES})
    with pytest.raises(KeybagError, match="version 9 is unknown") as e:
        parse_keybag(_with_record(blob, b"VERS", struct.pack(">I", 9)))
    assert e.value.unsupported
    with pytest.raises(KeybagError, match="iOS before 10.2") as e:
        parse_keybag(_without(_with_record(blob, b"VERS", struct.pack(">I", 3)), b"DPSL", b"DPIC", b"DPWT"))
    assert e.value.unsupported
    with pytest.raises(KeybagError, match="not a backup keybag"):
        parse_keybag(_with_record(blob, b"TYPE", struct.pack(">I", 0)))
    with pytest.raises(KeybagError, match="outside any phone"):
        parse_keybag(_with_record(blob, b"DPIC", struct.pack(">I", 2**32 - 1)))
    with pytest.raises(KeybagError, match="not a 4-byte integer"):
        parse_keybag(_with_record(blob, b"ITER", b"\x00\x01"))


def test_a_keybag_with_one_damaged_class_key_is_damage_not_a_wrong_password():
    blob = bytearray(make_bag("pw", {c: bytes([c]) * 32 for c in KEYBAG_CLASSES}))
    at = blob.rindex(b"WPKY") + 8 + 5  # inside the last class's wrapped key
    blob[at] ^= 0x40
    with pytest.raises(KeybagError, match="do not unwrap"):
        unlock_class_keys(parse_keybag(bytes(blob)), "pw")


def test_the_emulators_keybag_reads_back(tmp_path):
    phone = SyntheticPhone(3, 1 << 20, password="secret")
    bag = parse_keybag(phone.keybag())
    keys = unlock_class_keys(bag, "secret")
    assert unwrap_key(keys, phone.manifest_key()) == phone.manifest_db_key()
    with pytest.raises(PasswordMismatch):
        unlock_class_keys(bag, "Secret")
