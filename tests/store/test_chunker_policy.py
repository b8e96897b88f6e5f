"""`choose_policy` hands out policies made once; which one a file gets is still the rule as first written (the oracle
below, building a Policy per call), for structured, text, media, short and unknown binary heads."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.chunker import (
    _MEDIA,
    _STRUCTURED,
    COARSE,
    FINE,
    SNIFF_LEN,
    Policy,
    _is_text,
    _sniffer,
    choose_policy,
)


def _oracle(head: bytes) -> Policy:
    if head.startswith(_STRUCTURED) or (head[:1] in (b"{", b"[") and _is_text(head)):
        return Policy(FINE, True)
    if head.startswith(_MEDIA) or head[4:8] == b"ftyp" or len(head) < 64:
        return Policy(COARSE, False)
    sample = head[:SNIFF_LEN]
    shrinks = len(_sniffer().compress(sample)) < 0.9 * len(sample)
    return Policy(FINE if shrinks and head.isascii() else COARSE, shrinks)


_heads = st.one_of(
    st.tuples(
        st.sampled_from(_STRUCTURED + _MEDIA + (b"{", b"[", b"", b"\x00\x00\x00\x18ftyp")), st.binary(max_size=200)
    ).map(lambda t: t[0] + t[1]),
    st.text(max_size=300).map(str.encode),
    st.integers(0, 5000).map(lambda n: os.urandom(n)),
    st.tuples(st.integers(64, 3000), st.binary(min_size=1, max_size=3)).map(lambda t: t[1] * t[0]),  # shrinks
    st.tuples(st.integers(64, 3000), st.binary(min_size=1, max_size=1)).map(lambda t: b"\xc3" + t[1] * t[0]),
)


@settings(max_examples=300, deadline=None)
@given(_heads)
def test_the_policy_is_the_rule_as_written(head):
    assert choose_policy(head) == _oracle(head)


def test_every_kind_of_head_gets_its_policy():
    assert choose_policy(b"bplist00" + b"x" * 100) == Policy(FINE, True)
    assert choose_policy(os.urandom(4096)) == Policy(COARSE, False)
    assert choose_policy(b"ab" * 2000) == Policy(FINE, True)  # ASCII binary-looking that shrinks
    assert choose_policy(b"\xc3\x00" * 2000) == Policy(COARSE, True)  # not ASCII, shrinks
