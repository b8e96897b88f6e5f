"""`find` across versions: sync/find.py against a brute-force oracle over the catalogs, and the real CLI."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.catalog import domain_path, load_catalog
from phonevault.sync.find import _Index, find, literal


@pytest.fixture(scope="module")
def opened(web_vault, tmp_path_factory):
    repo = web_vault.open(tmp_path_factory.mktemp("find-cache"))
    view = repo.devices()[0]
    live = sorted(view.live(), key=lambda s: s.time)
    catalogs = {s.id: {domain_path(c): c for c in load_catalog(repo, s) if c.flags != 2} for s in live}
    yield repo, view, live, catalogs
    repo.close()


PATTERNS = st.one_of(
    st.sampled_from(
        [
            "IMG_0003",
            "img_0005.heic",
            "*.HEIC",
            "*/DCIM/*",
            "Library/Preferences",
            "*.pl?st",
            "[A-C]*",
            "nothing-matches-this",
            "Manifest",
            ".plist",
        ]
    ),  # fmt: skip
    st.text("IMGabcPrefs_0123456789./*?", min_size=1, max_size=6),
)


@settings(max_examples=40)
@given(PATTERNS)
def test_find_matches_the_brute_force_oracle(opened, pattern) -> None:
    repo, view, live, catalogs = opened
    glob = any(c in pattern for c in "*?[")

    def hit(path: str) -> bool:
        if glob:
            low = pattern.lower()
            return fnmatch.fnmatchcase(path.lower(), low) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1].lower(), low)
        return pattern.lower() in path.lower()

    expected: dict[str, list[bytes]] = {}
    for s in live:
        for path in catalogs[s.id]:
            if hit(path):
                expected.setdefault(path, []).append(s.id)
    result = find(repo, [view], pattern)
    assert {h.path: [s.id for s in h.snapshots] for h in result.hits} == expected
    for h in result.hits:
        assert h.in_current == (view.head in [s.id for s in h.snapshots])
        assert set(h.sizes) == {catalogs[s.id][h.path].size for s in h.snapshots}
    assert [h.path for h in result.hits] == sorted(expected)


def test_find_cli_lists_every_version_holding_a_file(web_vault, tmp_path) -> None:
    exe = Path(sys.executable).with_name("phonevault")
    env = web_vault.env(tmp_path / "cache")
    r = subprocess.run([str(exe), "find", "IMG_0001.MOV", "--json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    hits = {h["path"]: h for h in json.loads(r.stdout)}
    h = hits["CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV"]
    assert len(h["snapshots"]) == 3 and h["in_current"] and h["first"]["time"] < h["last"]["time"]
    r = subprocess.run([str(exe), "find", "IMG_0003"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "DCIM/100APPLE/IMG_0003.HEIC" in x)
    assert line.rstrip().endswith("no")  # deleted on day 1: not in the current backup
    r = subprocess.run([str(exe), "find", "x", "--device", "nope"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.count("\n") == 1


GLOB = st.text("ab/.*?[]!-İ", min_size=1, max_size=8)
PATHS = st.text("ab/.-İ\n", max_size=12)


@given(GLOB, PATHS)
def test_every_match_contains_the_literal(pattern, path) -> None:
    """What the index searches for first (`literal`) is in every path the exact matcher takes."""
    low = pattern.lower()
    if fnmatch.fnmatchcase(path.lower(), low) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1].lower(), low):
        assert literal(pattern) in path.lower()


@given(st.lists(st.text("aAbİ/.", max_size=6), max_size=8), st.text("abi/.", max_size=3))
def test_index_lines_are_exactly_the_lines_containing_the_needle(paths, needle) -> None:
    from array import array

    offsets, at = array("I"), 0
    for p in paths:
        offsets.append(at)
        at += len(p) + 1
    index = _Index("\n".join(paths), array("q", [0] * len(paths)), offsets)
    assert [index.path(k) for k in range(len(paths))] == paths
    assert list(index.lines(needle)) == [k for k, p in enumerate(paths) if needle in p.lower()]
