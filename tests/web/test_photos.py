"""sync/photos.py: the camera roll across versions, against an oracle and against the real emulator's days."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.projections import SnapshotRecord
from phonevault.store.records import SnapshotStats
from phonevault.sync.catalog import load_catalog
from phonevault.sync.photos import SnapshotMedia, camera_roll, merge, read_media, snapshot_media

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
            SnapshotMedia(f"CameraRollDomain/Media/DCIM/100APPLE/{name}", f"xx/{i}", 10, 5, bytes([c]) * 32)
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
    assert [(i.mtime, i.path) for i in items] == sorted(((i.mtime, i.path) for i in items), reverse=True)


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
        assert repo.cache.derived_get(b"photos/1/" + snap.tree) is not None
        assert snapshot_media(repo, snap) == first
        # a snapshot with another tree is another entry: nothing is shared by mistake
        other = replace(snap, tree=b"\0" * 32)
        assert repo.cache.derived_get(b"photos/1/" + other.tree) is None
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
