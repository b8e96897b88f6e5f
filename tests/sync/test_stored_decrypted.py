"""Files the phone encrypted, stored decrypted with their key (sync/decrypted.py) and the tree entry that says so.

The oracle is the phone's own cipher: what `Decrypting.stage` stores, encrypted again on the way out (`as_sent`),
is the ciphertext it was given, bit for bit; a ciphertext that does not decrypt is refused and nothing staged.
Trees: an entry with a `cipher_key` round-trips, a node without one is the format-1 node it always was (same
bytes, same id), and a format-1 node written before the field existed still reads.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.records import DeviceRecord
from phonevault.store.staged import StagedTree
from phonevault.store.trees import Change, FileEntry, apply_delta, decode_shard, encode_deltas, encode_shard
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.decrypted import Decrypting, as_sent
from phonevault.sync.ioscrypto import encrypt

keys32 = st.binary(min_size=32, max_size=32)
chunk_ids = st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple)
entries = st.builds(
    FileEntry,
    path=st.sampled_from(["ab/ab12", "Manifest.db", "cd/cdef"]),
    size=st.integers(0, 1 << 40),
    mode=st.just(0o100644),
    mtime_ns=st.integers(0, 1 << 62),
    chunks=chunk_ids,
    cipher_key=st.one_of(st.just(b""), keys32),
)


@given(e=entries)
def test_an_entry_round_trips_with_or_without_its_cipher_key(e):
    assert decode_shard(encode_shard([e])) == [e]
    state: dict[str, FileEntry] = {}
    for blob in encode_deltas([Change(e.path, "added", None, e)]):
        apply_delta(state, blob)
    assert state == {e.path: e}


def test_a_node_without_cipher_keys_is_the_format_1_node_it_always_was():
    e = FileEntry("ab/ab12", 5, 0o100644, 7, (b"\x01" * 32,))
    old = msgpack.packb([1, "shard", [["ab/ab12", 5, 0o100644, 7, [b"\x01" * 32]]]])  # as written before the field
    assert encode_shard([e]) == old
    assert decode_shard(old) == [e]
    keyed = encode_shard([FileEntry("ab/ab12", 5, 0o100644, 7, (b"\x01" * 32,), b"k" * 32)])
    assert msgpack.unpackb(keyed)[0] == 2  # an older phonevault refuses it instead of misreading it


def test_a_move_keeps_the_cipher_key():
    tree = StagedTree({"ab/ab12": FileEntry("ab/ab12", 5, 0o100644, 7, (b"\x01" * 32,), b"k" * 32)})
    tree.move("ab/ab12", "cd/cd34")
    assert tree.get("cd/cd34").cipher_key == b"k" * 32


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=keys32, data=st.binary(max_size=40_000), damage=st.sampled_from(["none", "flip", "cut"]))
def test_what_is_stored_decrypted_encrypts_back_to_what_was_sent(repo, key, data, damage):
    """Whatever bytes are given, either nothing is staged and the file is named, or what is stored encrypts back
    to exactly those bytes. A flipped last byte may still decrypt to valid padding (about 1 in 256): that is a valid
    ciphertext of another plaintext, stored and given back bit for bit; a cut one is never whole blocks."""
    sent = bytearray(b"".join(encrypt(key, iter([data]))))
    if damage == "flip":
        sent[-1] ^= 0x55
    elif damage == "cut":
        del sent[-1]
    dec = Decrypting({}, b"", {"ab/ab12": b""})
    with SnapshotWriter(repo, "phone", DeviceRecord(), incremental=False) as writer:
        pieces = iter([bytes(sent[i : i + 4096]) for i in range(0, len(sent), 4096)])
        entry = dec.stage(writer, "ab/ab12", 0o100644, 1, key, pieces)
        if entry is None:
            assert damage != "none" and writer.get("ab/ab12") is None
            assert "does not decrypt" in dec.problems[0]
            return
        assert damage != "cut" and entry.cipher_key == key and writer.get("ab/ab12") == entry
        assert b"".join(as_sent(entry, writer.read_file(entry))) == bytes(sent)  # out: what was sent, bit for bit
        if damage == "none":
            assert b"".join(writer.read_file(entry)) == data and entry.size == len(data)  # stored: the plaintext
