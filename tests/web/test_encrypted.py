"""Snapshots the phone encrypted: without the backup password shown as such and not browsable, cleanly (no
traceback, no 500); with it (`phonevault serve` given it as the CLI is) browsed, downloaded and thumbnailed as
plain ones, with nothing decrypted cached."""

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


BACKUP_PASSWORD = "correct horse 7"


@pytest.fixture(scope="module")
def sealed_vault(tmp_path_factory):
    """A phone that encrypts its backups, backed up on days 0 and 1 (day 1 deletes a photo), and the phone."""
    root = tmp_path_factory.mktemp("sealed")
    phone = SyntheticPhone(seed=16, size=10 * 2**20, password=BACKUP_PASSWORD)
    repo = Repository.init(LocalBackend(root / "vault"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=root / "c")
    try:
        for day in (0, 1):
            import_folder(repo, phone.write_backup(root / f"day{day}", day))
    finally:
        repo.close()
    return root, phone


def _open(root, cache):
    return Repository.open(LocalBackend(root / "vault"), PASSWORD, cache_root=cache)


def test_with_the_backup_password_encrypted_snapshots_browse_like_plain_ones(sealed_vault, tmp_path) -> None:
    import io
    import re
    import zipfile

    from PIL import Image

    from phonevault.cli.web import thumbs
    from phonevault.store.repository import format_time
    from phonevault.sync.encrypted import BackupPassword

    root, phone = sealed_vault
    days = [{f"{f.entry.domain}/{f.entry.relative_path}": f for f in phone.files(d) if f.taken} for d in (0, 1)]
    plain = days[0]
    day1 = set(days[1])
    repo = _open(root, tmp_path / "cache")
    app = create_app(Library(repo, BackupPassword([BACKUP_PASSWORD], None)), token="t", hosts=frozenset({"testserver"}))
    try:
        with TestClient(app, headers={"authorization": "token t"}) as c:
            view = repo.devices()[0]
            day0_snap, day1_snap = sorted(view.live(), key=lambda s: s.time)
            timeline = c.get(f"/device/{view.key}").text
            assert timeline.count("browse</a>") == 2 and "encrypted by the phone" in timeline

            # Files: listed, one downloaded as the phone has it (not the ciphertext), a folder zipped decrypted.
            dcim = "CameraRollDomain/Media/DCIM/100APPLE"
            r = c.get(f"/device/{view.key}/snap/{day0_snap.hex}/files", params={"path": dcim})
            assert r.status_code == 200 and "IMG_0001" in r.text
            some = sorted(p for p in plain if p.startswith(dcim) and p.endswith((".HEIC", ".JPG")))[0]
            r = c.get(f"/device/{view.key}/snap/{day0_snap.hex}/file", params={"path": some})
            want = b"".join(phone.open(plain[some]))
            assert r.status_code == 200 and r.content == want and int(r.headers["content-length"]) == len(want)
            r = c.get(f"/device/{view.key}/snap/{day0_snap.hex}/zip", params={"path": dcim})
            with zipfile.ZipFile(io.BytesIO(r.content)) as z:
                names = z.namelist()
                assert names and all(z.read(n) == b"".join(phone.open(plain[f"{dcim}/{n[9:]}"])) for n in names)

            # Camera roll: every version read, the deleted photo gone, thumbnails from the plaintext, not cached.
            doc = c.get(f"/api/device/{view.key}/photos").json()
            assert doc["encrypted_snapshots"] == [] and doc["current_known"]
            items = doc["items"]
            assert {i["path"] for i in items} == {
                p for d in days for p in d if p.startswith("CameraRollDomain/Media/DCIM/")
            }
            gone = {i["path"] for i in c.get(f"/api/device/{view.key}/photos?show=gone").json()["items"]}
            deleted = {p for p in set(days[0]) - day1 if p.startswith("CameraRollDomain/Media/DCIM/")}
            assert deleted and deleted <= gone
            assert all(p not in day1 or days[1][p].rev == 1 for p in gone)  # deleted, or the old bytes of an edit
            for i in items:
                r = c.get(f"/device/{view.key}/original/{i['key']}")
                held = [b"".join(phone.open(d[i["path"]])) for d in days if i["path"] in d]
                assert r.content in held, i["path"]
                if i["kind"] == "photo":
                    when = next(d[i["path"]].taken for d in days if i["path"] in d)  # read from the decrypted EXIF
                    assert i["taken"] == format_time(when * 10**6) and i["day"] == re.sub(r"T.*", "", i["taken"])
                    t = c.get(f"/device/{view.key}/thumb/{i['key']}")
                    assert t.headers["content-type"] == "image/jpeg" and t.headers["cache-control"] == "no-store"
                    assert Image.open(io.BytesIO(t.content)).format == "JPEG"
                    assert repo.cache.derived_get(thumbs.cache_key(bytes.fromhex(i["key"]), thumbs.THUMB_PX)) is None
            found = c.get("/api/find?q=IMG_0001").json()  # the search box reads the opened versions too
            assert found["encrypted_snapshots"] == [] and found["hits"]
            assert {h["path"] for h in found["hits"]} == {p for p in plain if "IMG_0001" in p}
            photos = c.get(f"/device/{view.key}/photos").text
            assert BACKUP_PASSWORD not in photos and BACKUP_PASSWORD not in timeline
    finally:
        repo.close()
    # Nothing decrypted reached a file: no cached value holds a photo's plaintext (its pad is high-entropy).
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"".join(phone.open(plain[some]))[-4096:-2048] not in on_disk


def test_without_or_with_another_password_they_say_so(sealed_vault, tmp_path) -> None:
    from phonevault.sync.encrypted import BackupPassword

    root, _phone = sealed_vault
    for password, says in ((None, "PHONEVAULT_BACKUP_PASSWORD"), (BackupPassword(["nope"], None), "does not open")):
        repo = _open(root, tmp_path / "cache")
        app = create_app(Library(repo, password), token="t", hosts=frozenset({"testserver"}))
        try:
            with TestClient(app, headers={"authorization": "token t"}) as c:
                view = repo.devices()[0]
                snap = view.live()[0]
                r = c.get(f"/device/{view.key}/snap/{snap.hex}/files")
                assert r.status_code == 409 and says in r.text, r.text[-500:]
                r = c.get(f"/device/{view.key}/photos")
                assert r.status_code == 200 and says in r.text
                doc = c.get(f"/api/device/{view.key}/photos").json()
                assert doc["items"] == [] and len(doc["encrypted_snapshots"]) == 2
        finally:
            repo.close()


def test_serve_takes_the_backup_password_from_the_environment(sealed_vault, tmp_path) -> None:
    import json
    import os

    from .server import Server

    root, _phone = sealed_vault
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEVAULT")}
    env.update(PHONEVAULT_PASSWORD=PASSWORD, PHONEVAULT_REPO=str(root / "vault"))
    env.update(PHONEVAULT_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path))
    (tmp_path / "pw").write_text(BACKUP_PASSWORD + "\n")
    for extra, opened in (({}, False), ({"PHONEVAULT_BACKUP_PASSWORD_FILE": str(tmp_path / "pw")}, True)):
        with Server(dict(env, **extra)) as server:
            assert BACKUP_PASSWORD not in server.url
            key = json.loads(_get(server, "/api/devices"))[0]["key"]
            doc = json.loads(_get(server, f"/api/device/{key}/photos"))
            assert bool(doc["items"]) is opened and bool(doc["encrypted_snapshots"]) is not opened


def _get(server, path: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(server.base + path, headers={"Authorization": "token " + server.token})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def test_find_on_the_command_line_takes_the_backup_password(sealed_vault, tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, phone = sealed_vault
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEVAULT")}
    env.update(PHONEVAULT_PASSWORD=PASSWORD, PHONEVAULT_REPO=str(root / "vault"))
    env.update(PHONEVAULT_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path))
    exe = str(Path(sys.executable).with_name("phonevault"))
    run = lambda extra: subprocess.run(  # noqa: E731
        [exe, "find", "IMG_0001", "--json"], env=dict(env, **extra), capture_output=True, text=True, timeout=300
    )
    without = run({})
    assert without.returncode == 0 and json.loads(without.stdout) == [] and "2 version(s)" in without.stderr
    with_it = run({"PHONEVAULT_BACKUP_PASSWORD": BACKUP_PASSWORD})
    hits = json.loads(with_it.stdout)
    assert with_it.returncode == 0 and "not searched" not in with_it.stderr
    want = {f"{f.entry.domain}/{f.entry.relative_path}" for d in (0, 1) for f in phone.files(d) if f.kind != "dir"}
    assert {h["path"] for h in hits} == {p for p in want if "IMG_0001" in p}
    per_day = [{f"{f.entry.domain}/{f.entry.relative_path}" for f in phone.files(d)} for d in (0, 1)]
    assert all(len(h["snapshots"]) == sum(h["path"] in d for d in per_day) for h in hits)
