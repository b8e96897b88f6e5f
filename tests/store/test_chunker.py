import io
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.chunker import COARSE, FINE, StreamChunker, choose_policy, chunk_bytes

SMALL = FINE


def feed_in_blocks(data: bytes, sizes: list[int], profile) -> list[bytes]:
    sc = StreamChunker(profile)
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out += list(sc.feed(data[pos : pos + n]))
        pos += n
        i += 1
    return out + list(sc.finish())


@given(st.binary(max_size=300_000), st.lists(st.integers(1, 70_000), min_size=1, max_size=8))
def test_stream_chunks_reassemble_and_equal_whole_buffer_cut(data, sizes):
    chunks = feed_in_blocks(data, sizes, SMALL)
    assert b"".join(chunks) == data
    assert chunks == chunk_bytes(data, SMALL)
    assert all(len(c) <= SMALL.max_size for c in chunks)


def test_stream_chunker_coarse_on_random_data_is_bounded_and_exact():
    data = os.urandom(40 << 20)
    chunks = feed_in_blocks(data, [32 << 10, 1 << 20, 7], COARSE)
    assert chunks == chunk_bytes(data, COARSE)
    assert all(len(c) <= COARSE.max_size for c in chunks[:-1])
    assert 10 < len(chunks) < 200


def test_local_edit_changes_few_fine_chunks():
    base = bytearray(os.urandom(2 << 20))
    before = set(chunk_bytes(bytes(base), FINE))
    base[1_000_000:1_000_100] = os.urandom(100)
    after = chunk_bytes(bytes(base), FINE)
    assert sum(c not in before for c in after) <= 3


def test_policy_by_content():
    assert choose_policy(b"SQLite format 3\x00" + bytes(100)).profile is FINE
    assert choose_policy(b"bplist00" + bytes(100)).compress
    assert choose_policy(b"\x00\x00\x00\x18ftypheic" + os.urandom(1000)).profile is COARSE
    assert not choose_policy(b"\xff\xd8\xff\xe1" + os.urandom(1000)).compress
    assert not choose_policy(bytes(random.Random(1).randbytes(70_000))).compress  # encrypted backups never shrink
    assert choose_policy(b'{"a": [1, 2, "\xc3\xa9"]}\n' * 100).profile is FINE
    assert choose_policy(b"[1, 2, 3]").compress


@settings(max_examples=300)
@given(st.integers(0, 2**64).map(random.Random), st.integers(64, 70_000), st.sampled_from([b"", b"{", b"["]))
def test_random_bytes_never_get_the_structured_policy(rnd, size, lead):
    """Random content (an encrypted iOS backup file) never gets small chunks and a zstd pass, whatever its first
    byte: 1 file in 128 starts with `{` or `[`."""
    policy = choose_policy(lead + rnd.randbytes(size))
    assert policy.profile is COARSE and not policy.compress
    assert choose_policy(b"\x01\x02" * 40_000).compress


def test_blocks_larger_than_the_buffer_room_and_two_files_at_once():
    """Blocks past FEED_ROOM are copied in in pieces; two chunkers live at once never share a buffer."""
    rnd = random.Random(5)
    a, b = rnd.randbytes(30 << 20), rnd.randbytes(25 << 20)
    sa, sb = StreamChunker(COARSE), StreamChunker(COARSE)
    out_a, out_b = [], []
    for i in range(0, max(len(a), len(b)), 3 << 20):
        out_a += list(sa.feed(a[i : i + (3 << 20)]))
        out_b += list(sb.feed(b[i : i + (3 << 20)]))
    out_a += list(sa.finish())
    out_b += list(sb.finish())
    assert out_a == chunk_bytes(a, COARSE)
    assert out_b == chunk_bytes(b, COARSE)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200_000), st.integers(1, 70_000))
def test_read_from_cuts_as_feed_does(data, limit):
    sc = StreamChunker(SMALL)
    f, out = io.BytesIO(data), []
    while sc.read_from(f, limit):
        out += list(sc.ready())
    out += list(sc.finish())
    assert out == chunk_bytes(data, SMALL)
