"""Sizes people type: exact for every unit spelling, and the inverse of what `human` prints, to its rounding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.cli.render import human
from phonevault.cli.sizes import parse_size


def test_examples() -> None:
    assert parse_size("64MB") == 64 * 2**20 and parse_size("6GB") == 6 * 2**30 and parse_size("1000") == 1000
    assert parse_size("1.5GiB") == 3 * 2**29 and parse_size(" 512 kib ") == 512 * 1024
    for bad in ("lots", "", "MB", "-1MB", "1.5.2GB", "10 PB"):
        with pytest.raises(ValueError):
            parse_size(bad)


@given(
    n=st.integers(0, 10**6),
    unit=st.sampled_from(["", "K", "M", "G", "T"]),
    suffix=st.sampled_from(["", "B", "iB"]),
    upper=st.booleans(),
    space=st.sampled_from(["", " "]),
)
def test_every_spelling_is_a_binary_multiple(n: int, unit: str, suffix: str, upper: bool, space: str) -> None:
    text = f"{n}{space}{unit}{suffix if unit or suffix != 'iB' else ''}"
    assert parse_size(text.upper() if upper else text.lower()) == n * 1024 ** " KMGT".index(unit or " ")


@given(st.integers(0, 2**50))
def test_parses_what_human_prints_to_its_rounding(n: int) -> None:
    # human() keeps one decimal of the largest unit below 1024 of it: off by at most 5 % (plus the cut to whole bytes).
    assert abs(parse_size(human(n)) - n) <= n * 0.05 + 1
