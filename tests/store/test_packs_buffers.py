"""Pack writing with pooled buffers and sealing without joins: the bytes are those of the plain way.

A pack buffer is reused once its writer is dropped, so a pack must never show another pack's bytes, and a pack in
flight must stay readable until its writer is dropped. `seal_flagged` must give exactly `seal(flag + payload)`'s
format, checked by opening it with the one-shot AEAD (MasterKey.open).
"""

from __future__ import annotations

import gc
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.crypto import MasterKey
from phonevault.store.packs import (
    DATA,
    POOL_BLOB,
    SEAL_IN_PLACE,
    TRAILER,
    PackWriter,
    open_blob,
    pack_name,
    parse_header,
    seal_blob,
)

KEY = MasterKey(bytes(range(32)))


def blob(rnd: random.Random, n: int) -> tuple[bytes, bytes]:
    plain = rnd.randbytes(n)
    blob_id = KEY.blob_id(plain)
    return blob_id, seal_blob(KEY, blob_id, plain, False)


def write_pack(backend: MemoryBackend, blobs: list[tuple[bytes, bytes]], target: int) -> tuple[str, bytes]:
    w = PackWriter(backend, KEY, target)
    for blob_id, sealed in blobs:
        w.add(blob_id, DATA, sealed, len(sealed) - 29)
    pack_id, _locations = w.finish()
    return pack_id, backend.get(pack_name(pack_id))


def check_pack(pack_id: str, data: bytes, blobs: list[tuple[bytes, bytes]]) -> None:
    """The pack is its blobs joined, then its header and trailer: nothing else, nothing left from a reused buffer."""
    body = b"".join(bytes(s) for _i, s in blobs)
    assert data[: len(body)] == body
    hlen = TRAILER.unpack(data[-TRAILER.size :])[0]
    assert len(data) == len(body) + hlen + TRAILER.size
    locations = parse_header(KEY, pack_id, data, len(data))
    for blob_id, _sealed in blobs:
        loc = locations[blob_id]
        open_blob(KEY, blob_id, data[loc.offset : loc.offset + loc.length], "pack")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.lists(st.integers(0, 3 * POOL_BLOB), min_size=1, max_size=6), max_size=5))
def test_packs_in_reused_buffers_hold_only_their_own_bytes(seed, packs):
    rnd, backend = random.Random(seed), MemoryBackend()
    for sizes in packs:  # each writer is dropped before the next: the next takes its buffer
        blobs = [blob(rnd, n) for n in sizes]
        pack_id, data = write_pack(backend, blobs, target=4 * POOL_BLOB)
        check_pack(pack_id, data, blobs)
        gc.collect()


def test_a_blob_past_twice_the_target_grows_the_buffer():
    rnd, backend = random.Random(1), MemoryBackend()
    blobs = [blob(rnd, 1000), blob(rnd, 5 * POOL_BLOB), blob(rnd, 10)]
    pack_id, data = write_pack(backend, blobs, target=POOL_BLOB)
    check_pack(pack_id, data, blobs)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([0, 1, 15, 16, 17, SEAL_IN_PLACE - 1, SEAL_IN_PLACE, 3 << 20]))
def test_seal_flagged_is_seal_of_the_joined_bytes(seed, n):
    payload = random.Random(seed).randbytes(n)
    ad = os.urandom(32)
    sealed = KEY.seal_flagged(b"\x00", payload, ad)
    assert len(sealed) == len(KEY.seal(b"\x00" + payload, ad))
    assert KEY.open(sealed, ad, "blob") == b"\x00" + payload  # opened by the one-shot AESGCM.decrypt


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32), st.integers(SEAL_IN_PLACE - 2, SEAL_IN_PLACE + 2), st.booleans())
def test_blobs_around_the_in_place_size_open_to_their_plaintext(seed, n, compress):
    plain = random.Random(seed).randbytes(n)
    blob_id = KEY.blob_id(plain)
    assert open_blob(KEY, blob_id, bytes(seal_blob(KEY, blob_id, plain, compress)), "blob") == plain
