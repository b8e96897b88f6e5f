"""`Layout.compare` (a folder's files against its list) against the comparison as first written, row by row through
`backup_path`, for every layout: the same problems in the same order, whatever is missing, resized, padded or
unnamed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.layouts import LAYOUTS, Layout
from phonevault.sync.paths import shown


def _oracle(layout: Layout, present: dict[str, int], sizes: dict[str, int], keyed: frozenset[str]) -> list[str]:
    problems = []
    for fid, size in sizes.items():
        rel = layout.backup_path(fid)
        if (have := present.get(rel)) is None:
            problems.append(f"{shown(rel)}: listed in {layout.listing} but missing from the folder")
        elif fid in keyed and not (have % 16 == 0 and size < have <= size + 16):
            problems.append(f"{shown(rel)}: {have} bytes, {layout.listing} says {size} before padding (truncated?)")
        elif fid not in keyed and have != size:
            problems.append(f"{shown(rel)}: {have} bytes, {layout.listing} says {size} (truncated?)")
    if not layout.subfolders:
        named = {layout.backup_path(fid) for fid in sizes} | layout.metadata
        for rel in sorted(present.keys() - named):
            if layout.companion and (
                rel.endswith(layout.companion) or rel.removesuffix(layout.suffix) + layout.companion in present
            ):
                continue
            problems.append(f"{shown(rel)}: no {layout.record} names it (stored as it is)")
    return problems


_fid = st.sampled_from(["aa01", "aa02", "ab03", "ff04", "0005", "\x1b06"])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(LAYOUTS)),
    st.dictionaries(_fid, st.integers(0, 40), max_size=6),
    st.lists(st.tuples(_fid, st.integers(0, 3), st.integers(0, 40)), max_size=8),
    st.frozensets(_fid, max_size=3),
)
def test_compare_finds_what_the_row_by_row_comparison_finds(name, sizes, files, keyed):
    layout = LAYOUTS[name]
    present: dict[str, int] = {}
    for fid, how, size in files:  # at its size, padded, resized, or an extra/companion name
        rel = (layout.backup_path(fid), layout.backup_path(fid), fid + layout.companion, "Info.plist")[how]
        base = sizes.get(fid, size)
        present[rel] = (base, (base // 16 + 1) * 16, size, size)[how]
    assert layout.compare(present, sizes, keyed) == _oracle(layout, present, sizes, keyed)
