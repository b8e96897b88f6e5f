"""MasterKey.open_view and seal_buffer: the same format and plaintext as `open` and `seal`, from and into buffers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.crypto import NONCE_LEN, OVERHEAD, MasterKey
from phonevault.store.errors import CorruptObject

KEY = MasterKey(bytes(range(32)))
KINDS = st.sampled_from([bytes, bytearray, memoryview])


@given(st.binary(max_size=70_000), st.binary(max_size=40), KINDS, st.integers(0, 16))
def test_open_view_equals_open(plaintext, ad, kind, lead):
    for sealed in (KEY.seal(plaintext, ad), KEY.seal_flagged(b"\x00", plaintext, ad), KEY.seal_buffer(plaintext, ad)):
        framed = b"\xaa" * lead + bytes(sealed) + b"\xbb"  # a blob in the middle of a ranged read
        view = memoryview(framed)[lead : lead + len(sealed)]
        assert KEY.open_view(view if kind is memoryview else kind(view), ad, "x") == KEY.open(sealed, ad, "x")


@given(st.binary(max_size=70_000), st.binary(max_size=40), KINDS)
def test_seal_buffer_is_sealed_as_seal_seals(plaintext, ad, kind):
    sealed = KEY.seal_buffer(kind(plaintext), ad)
    assert len(sealed) == len(plaintext) + OVERHEAD
    assert KEY.open(sealed, ad, "x") == plaintext
    # the same layout as `seal`: with seal's nonce, GCM gives the same bytes after it
    nonce = bytes(sealed[:NONCE_LEN])
    assert bytes(sealed[NONCE_LEN:]) == KEY._aead.encrypt(nonce, plaintext, ad)
    assert KEY.seal_buffer(plaintext, ad)[:NONCE_LEN] != nonce  # a fresh random nonce each time


@given(st.binary(min_size=1, max_size=5_000), st.data())
def test_open_view_refuses_a_flipped_bit(plaintext, data):
    sealed = bytearray(KEY.seal_buffer(plaintext, b"ad"))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptObject):
        KEY.open_view(memoryview(sealed), b"ad", "x")


def test_open_view_refuses_wrong_ad_and_a_short_object():
    with pytest.raises(CorruptObject):
        KEY.open_view(KEY.seal_buffer(b"\x00chunk", b"blob-a"), b"blob-b", "x")
    with pytest.raises(CorruptObject, match="too short"):
        KEY.open_view(memoryview(b"\x00" * (OVERHEAD - 1)), b"blob-a", "x")
