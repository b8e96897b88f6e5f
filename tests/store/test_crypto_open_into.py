"""MasterKey.open_into: the same plaintext as `open`, into the caller's buffer, and the same refusals."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.crypto import OVERHEAD, MasterKey
from phonevault.store.errors import CorruptObject

KEY = MasterKey(bytes(range(32)))


def sealed_forms(flag: bytes, payload: bytes, ad: bytes) -> list[bytes | bytearray]:
    """flag || payload sealed both ways the vault seals blobs (one AESGCM call, and GCM in two updates)."""
    return [KEY.seal(flag + payload, ad), KEY.seal_flagged(flag, payload, ad)]


@given(
    st.sampled_from([b"\x00", b"\x01", b"\x7f"]),
    st.binary(max_size=70_000),
    st.binary(max_size=40),
    st.integers(0, 64),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_open_into_equals_open(flag, payload, ad, spare, kind):
    for sealed in sealed_forms(flag, payload, ad):
        out = bytearray(b"\xaa" * (len(sealed) - OVERHEAD + 15 + spare))  # a reused buffer holds old bytes
        n = KEY.open_into(kind(sealed), ad, "x", out)
        assert n == len(flag) + len(payload)
        assert bytes(out[:n]) == KEY.open(sealed, ad, "x") == flag + payload


@given(st.binary(max_size=3000), st.data())
def test_open_into_refuses_a_flipped_bit(payload, data):
    sealed = bytearray(KEY.seal(b"\x00" + payload, b"ad"))
    pos = data.draw(st.integers(0, len(sealed) - 1))
    sealed[pos] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CorruptObject, match="authentication failed"):
        KEY.open_into(sealed, b"ad", "x", bytearray(len(sealed)))


def test_open_into_refuses_a_wrong_tag_wrong_ad_and_a_short_object():
    sealed = bytearray(KEY.seal(b"\x00chunk", b"blob-a"))
    out = bytearray(64)
    sealed[-1] ^= 0x80  # the tag
    with pytest.raises(CorruptObject, match="authentication failed"):
        KEY.open_into(sealed, b"blob-a", "x", out)
    with pytest.raises(CorruptObject, match="authentication failed"):
        KEY.open_into(KEY.seal(b"\x00chunk", b"blob-a"), b"blob-b", "x", out)
    with pytest.raises(CorruptObject, match="too short"):
        KEY.open_into(b"\x00" * (OVERHEAD - 1), b"blob-a", "x", out)


def test_open_into_wants_room_for_a_block_less_one():
    sealed = KEY.seal(b"\x00" + bytes(100), b"ad")
    with pytest.raises(ValueError, match="room"):
        KEY.open_into(sealed, b"ad", "x", bytearray(101 + 14))
    assert KEY.open_into(sealed, b"ad", "x", bytearray(101 + 15)) == 101
