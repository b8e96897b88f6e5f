"""Snapshots the phone encrypted: shown as such and not browsable, cleanly (no traceback, no 500)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from phonevault.cli.web.app import create_app
from phonevault.cli.web.library import Library
from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.photos import camera_roll
from tests.conftest import FAST_SCRYPT, PASSWORD


@pytest.fixture
def client(tmp_path):
    repo = Repository.init(LocalBackend(tmp_path / "vault"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=tmp_path / "c")
    phone = SyntheticPhone(seed=5, size=2 * 2**20, password="1234")
    import_folder(repo, phone.write_backup(tmp_path / "day0", 0))
    app = create_app(Library(repo), token="t", hosts=frozenset({"testserver"}))
    with TestClient(app, headers={"authorization": "token t"}) as c:
        yield c, repo
    repo.close()


def test_encrypted_snapshots_are_shown_and_not_browsable(client) -> None:
    c, repo = client
    view = repo.devices()[0]
    snap = view.live()[0]
    roll = camera_roll(repo, view)
    assert roll.encrypted == (snap,) and not roll.items and not roll.current_known and roll.gone() == []
    assert "encrypted by the phone" in c.get("/").text
    r = c.get(f"/device/{view.key}")
    assert r.status_code == 200 and "encrypted by the phone" in r.text and "browse</a>" not in r.text
    r = c.get(f"/device/{view.key}/snap/{snap.hex}/files")
    assert r.status_code == 409 and "backup password" in r.text and "phonevault ls" in r.text
    r = c.get(f"/device/{view.key}/snap/{snap.hex}/file", params={"path": "HomeDomain/Library/x"})
    assert r.status_code == 409
    r = c.get(f"/device/{view.key}/photos?show=gone")
    assert r.status_code == 200 and "encrypted by the phone" in r.text and "cannot be told" in r.text
    doc = c.get(f"/api/device/{view.key}/photos").json()
    assert doc["encrypted_snapshots"] == [snap.hex] and doc["items"] == [] and not doc["current_known"]
    doc = c.get("/api/find?q=IMG").json()
    assert doc["encrypted_snapshots"] == [snap.hex] and doc["hits"] == []
    assert "encrypted by the phone not searched" in c.get("/find?q=IMG").text
