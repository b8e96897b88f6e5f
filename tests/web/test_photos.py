"""sync/photos.py: the camera roll across versions, against an oracle and against the real emulator's days."""

from __future__ import annotations

import re
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.projections import SnapshotRecord
from phonevault.store.records import SnapshotStats
from phonevault.sync.catalog import load_catalog
from phonevault.sync.photos import PHOTOS_CACHE_FORMAT, SnapshotMedia, camera_roll, merge, read_media, snapshot_media

NAMES = ["IMG_0001.HEIC", "IMG_0002.JPG", "IMG_0003.MOV", "IMG_0004.PNG", "notes.txt"]


def _snap(n: int) -> SnapshotRecord:
    return SnapshotRecord(bytes([n]) * 16, "dev", n, n * 1000, "test", None, (), b"t", (), SnapshotStats(), b"")


@st.composite
def histories(draw):
    """Snapshots, each a list of (name, content) rows drawn from a small pool (so contents recur, move and vanish),
    and which snapshot is current (or none)."""
    n = draw(st.integers(1, 5))
    rows = draw(
        st.lists(
            st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 7)), max_size=8),
            min_size=n,
            max_size=n,
        )
    )
    current = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return rows, current


@given(histories())
def test_merge_matches_the_set_oracle(history) -> None:
    rows, current_index = history
    snaps = [_snap(i) for i in range(len(rows))]
    per = []
    for snap, snap_rows in zip(snaps, rows, strict=True):
        media = [
            SnapshotMedia(
                f"CameraRollDomain/Media/DCIM/100APPLE/{name}", f"xx/{i}", 10, 5, bytes([c]) * 32, 900 - 7 * c
            )
            for i, (name, c) in enumerate(snap_rows)
        ]
        per.append((snap, media))
    current = snaps[current_index].id if current_index is not None else None
    items = merge(per, current)

    def contents(i: int) -> set[bytes]:
        return {bytes([c]) * 32 for name, c in rows[i] if not name.endswith(".txt")}

    every = set().union(*(contents(i) for i in range(len(rows))))
    assert [i.content for i in items].count(None) == 0
    assert {i.content for i in items} == every
    assert len(items) == len(every)  # one item per content, however many names or versions hold it
    now = contents(current_index) if current_index is not None else set()
    assert {i.content for i in items if not i.in_current} == every - now
    for item in items:
        assert list(item.snapshots) == [s.id for k, s in enumerate(snaps) if item.content in contents(k)]
        assert item.source == item.snapshots[-1]  # read from the newest snapshot holding it
    assert [(i.taken, i.path) for i in items] == sorted(((i.taken, i.path) for i in items), reverse=True)
    assert all(i.taken == 900 - 7 * i.content[0] for i in items)  # ordered by when taken, not by mtime


def test_camera_roll_of_three_days(web_vault, tmp_path) -> None:
    with web_vault.open(tmp_path / "cache") as repo:
        view = repo.devices()[0]
        live = sorted(view.live(), key=lambda s: s.time)
        assert view.head == live[-1].id
        roll = camera_roll(repo, view)
        assert roll.current_known and not roll.encrypted
        by_name: dict[str, list] = {}
        for item in roll.items:
            by_name.setdefault(item.name, []).append(item)
        days = [set(d) for d in web_vault.days]
        deleted_day2 = {p.rsplit("/", 1)[1] for p in days[1] - days[2]}
        assert "IMG_0005.HEIC" in deleted_day2  # the emulator's day 2 deletes it: the web tests rely on that
        gone_names = {i.name for i in roll.gone()}
        assert deleted_day2 <= gone_names
        assert {p.rsplit("/", 1)[1] for p in days[0] - days[2]} <= gone_names
        # The current backup's media are exactly the items held by the current snapshot, none of them gone.
        current_paths = {i.path for i in roll.items if i.in_current}
        assert current_paths == {p for p in days[2] if p.endswith((".HEIC", ".JPG", ".MOV"))}
        # Each item's bytes, read back, are the bytes of a day folder that held it: bit for bit.
        for item in roll.items:
            data = b"".join(read_media(repo, view, item))
            assert any(d.get(item.path) == data for d in web_vault.days), item.path
            held = [k for k, s in enumerate(live) if s.id in item.snapshots]
            assert held == [k for k, d in enumerate(web_vault.days) if d.get(item.path) == data]


def test_snapshot_media_is_cached_sealed_and_keyed_by_tree(web_vault, tmp_path) -> None:
    with web_vault.open(tmp_path / "cache") as repo:
        snap = repo.devices()[0].live()[0]
        first = snapshot_media(repo, snap)
        assert repo.cache.derived_get(b"photos/%d/" % PHOTOS_CACHE_FORMAT + snap.tree) is not None
        assert snapshot_media(repo, snap) == first
        # a snapshot with another tree is another entry: nothing is shared by mistake
        other = replace(snap, tree=b"\0" * 32)
        assert repo.cache.derived_get(b"photos/%d/" % PHOTOS_CACHE_FORMAT + other.tree) is None
        names = {m.path for m in first}
        assert names == {
            f"{c.domain}/{c.relative_path}"
            for c in load_catalog(repo, snap)
            if c.flags == 1 and c.relative_path.startswith("Media/DCIM/")
        }
    data = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"IMG_0" not in data and b"CameraRollDomain" not in data  # the cached rows are sealed


def test_the_merged_roll_is_cached_per_versions_and_head(web_vault, tmp_path) -> None:
    with web_vault.open(tmp_path / "cache") as repo:
        view = repo.devices()[0]
        live = sorted(view.live(), key=lambda s: s.time)
        first = camera_roll(repo, view)
        assert camera_roll(repo, view) == first  # the second one comes from the cache
        # Another head (as after a rollback to day 0) is another roll: day 0's photos are current again.
        rolled = replace(view, head=live[0].id)
        again = camera_roll(repo, rolled)
        expected = merge([(s, snapshot_media(repo, s)) for s in live], live[0].id)
        assert again.items == expected and again.current == live[0].id
        assert {i.name for i in again.gone()} != {i.name for i in first.gone()}
        assert camera_roll(repo, rolled) == again


def test_the_roll_is_ordered_and_grouped_by_the_capture_dates_the_generator_wrote(web_vault, tmp_path) -> None:
    """The oracle is the generator's own record of when each photo was taken (it wrote that into the EXIF); a
    video carries no EXIF here, so its date is its mtime. The edited photo (new mtime, old capture date) is what
    tells an EXIF reading from an mtime reading."""
    from starlette.testclient import TestClient

    from phonevault.cli.web.app import create_app
    from phonevault.cli.web.library import Library, day_of

    mtime = {p: m for day in web_vault.mtimes for p, m in day.items()}  # the newest mtime each path had
    with web_vault.open(tmp_path / "cache") as repo:
        roll = camera_roll(repo, repo.devices()[0])
        for item in roll.items:
            expected = web_vault.taken[item.path] if item.kind == "photo" else mtime[item.path]
            assert item.taken == expected, item.path
        edited = [i for i in roll.items if i.kind == "photo" and i.mtime != i.taken]
        assert edited and any(day_of(i.mtime) != day_of(i.taken) for i in edited)  # an edit on a later day
        with TestClient(create_app(Library(repo), token="t", hosts=frozenset({"testserver"}))) as c:
            c.headers["authorization"] = "token t"
            key = c.get("/api/devices").json()[0]["key"]
            html = c.get(f"/device/{key}/photos").text
    shown: dict[str, set[str]] = {}
    for section in re.findall(r'<section class="day" data-day="([^"]+)">(.*?)</section>', html, re.S):
        day, body = section
        assert day not in shown  # one group per date, newest first
        shown[day] = set(re.findall(r'data-key="([0-9a-f]+)"', body))
    expected_groups: dict[str, set[str]] = {}
    for item in roll.items:
        expected_groups.setdefault(day_of(item.taken), set()).add(item.key)
    assert shown == expected_groups
    assert list(shown) == sorted(shown, reverse=True)
