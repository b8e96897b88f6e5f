"""Sizes as people type them: '64MB', '6GB', '512KiB', '1.5GiB', '1000' → bytes.

Multiples are binary whether or not the 'i' is written (MB = MiB): phones, the emulator and the benchmarks all
think in MiB/GiB, and `render.human` prints binary units. Also the argparse type of the emulator's and the
benchmarks' command lines, which is why it raises ValueError rather than a click error.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text`` (a fractional count is rounded down to a whole byte); ValueError when it is no size."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2].upper() or " "))
