"""A backup made while the web view runs: it appears on the next page load, and its new photos download."""

from __future__ import annotations

from starlette.testclient import TestClient

from phonevault.cli.web.app import create_app
from phonevault.cli.web.library import Library
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.mobilesync import import_folder
from tests.conftest import reopen

from .conftest import _camera_roll_files


def test_a_backup_made_while_serving_shows_and_downloads(make_repo, tmp_path) -> None:
    writer = make_repo()
    phone = SyntheticPhone(seed=9, size=2 * 2**20)
    import_folder(writer, phone.write_backup(tmp_path / "day0", 0))
    reader = reopen(writer, tmp_path / "reader-cache")
    app = create_app(Library(reader), token="t", hosts=frozenset({"testserver"}))
    with TestClient(app, headers={"authorization": "token t"}) as c:
        key = c.get("/api/devices").json()[0]["key"]
        for day in (1, 2):  # twice: the vault's own once-per-handle index reload would cover only the first
            before = {i["key"] for i in c.get(f"/api/device/{key}/photos").json()["items"]}
            folder = phone.write_backup(tmp_path / f"day{day}", day)
            import_folder(writer, folder)
            now = _camera_roll_files(folder)
            assert c.get("/api/devices").json()[0]["snapshots"] == day + 1
            items = c.get(f"/api/device/{key}/photos").json()["items"]
            new = [i for i in items if i["key"] not in before]
            assert new
            for i in new:
                r = c.get(f"/device/{key}/original/{i['key']}")
                assert r.status_code == 200 and r.content == now[i["path"]], (day, i["name"], r.status_code)
    reader.close()
