"""Vaults made by earlier code keep working: tests/data/vault-v1/ was written by the code of commit 003ff20 (see
tests/data/make_v1_vault.py). It must open, check clean with every blob read, show the same history (tags, pins,
forgotten, heads) and export every live snapshot bit-exact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from phonevault.store.backends.local import LocalBackend
from phonevault.store.check import check
from phonevault.store.repository import Repository
from phonevault.sync.export import export_snapshot
from phonevault.sync.records import backup_meta, device_info

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture
def v1(tmp_path):
    expected = json.loads((DATA / "vault-v1.json").read_text())
    shutil.copytree(DATA / "vault-v1", tmp_path / "vault")  # never touch the committed fixture
    repo = Repository.open(LocalBackend(tmp_path / "vault"), expected["password"], cache_root=tmp_path / "cache")
    yield repo, expected
    repo.close()


def test_a_v1_vault_opens_and_checks_clean(v1):
    repo, expected = v1
    report = check(repo, read_data=True)
    assert report.ok, report.errors
    views = repo.devices()
    assert len(views) == expected["devices"]
    assert sorted(v.head.hex() for v in views) == expected["heads"]
    snaps = {s.hex: s for v in views for s in v.snapshots}
    assert {h for h, s in snaps.items() if not s.forgotten} == set(expected["snapshots"])
    assert [h for h, s in snaps.items() if s.forgotten] == expected["forgotten"]
    assert [h for h, s in snaps.items() if s.pinned] == expected["pinned"]
    for h, tags in expected["tagged"].items():
        assert list(snaps[h].tags) == tags
    for h, want in expected["snapshots"].items():
        assert snaps[h].source == want["source"]
        for field in ("files", "size", "added", "modified", "removed", "new_bytes"):
            assert getattr(snaps[h].stats, field) == want["stats"][field], (h, field)
        meta = backup_meta(snaps[h])  # written as a map then, read as the typed record now
        assert meta.encrypted is False and meta.problems == 0
        assert meta.full is (False if h == expected["device_snapshot"] else None)  # incremental: imported before
    # The device's identity, written as a map, reads as the typed record.
    assert sorted(v.info.name for v in views) == expected["device_names"]
    for v in views:
        info = device_info(v)
        assert info.udid == v.device and info.name == v.info.name and info.serial and info.imei


def test_every_live_v1_snapshot_exports_bit_exact(v1, tmp_path):
    repo, expected = v1
    for view in repo.devices():
        for snap in view.live():
            dest = tmp_path / "export" / snap.hex
            folder = export_snapshot(repo, view, snap, dest).path
            got = {
                p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            }
            assert got == expected["snapshots"][snap.hex]["files"], snap.hex
