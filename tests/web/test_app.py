"""The web app through Starlette's TestClient: the token and host rules, every page, downloads bit-exact, no path
from a URL reaching anything but the catalog, and a vault left exactly as it was."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from PIL import Image
from starlette.testclient import TestClient

from phonevault.cli.web import thumbs
from phonevault.cli.web.app import create_app
from phonevault.cli.web.library import Library

TOKEN = "t0ken-for-tests"
PORT = 8765
HOSTS = frozenset({"testserver", f"127.0.0.1:{PORT}"})


@pytest.fixture
def served(web_vault, tmp_path):
    repo = web_vault.open(tmp_path / "cache")
    app = create_app(Library(repo), token=TOKEN, port=PORT, hosts=HOSTS)
    with TestClient(app, follow_redirects=False) as client:
        yield client, repo
    repo.close()


@pytest.fixture
def client(served):
    c, _repo = served
    c.headers["authorization"] = f"token {TOKEN}"
    return c


def _vault_files(path):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


def _device(client) -> str:
    return client.get("/api/devices").json()[0]["key"]


def _snapshots(client, key) -> list[str]:
    return re.findall(r'data-snapshot="([0-9a-f]+)"', client.get(f"/device/{key}").text)


# --- the gate --------------------------------------------------------------------------------------------------
def test_every_route_needs_the_token(served) -> None:
    client, repo = served
    key = repo.device_keys()[0]
    for url in ["/", "/static/style.css", "/static/app.js", f"/device/{key}", f"/device/{key}/photos", "/find?q=a",
                "/api/devices", "/nothing/here"]:  # fmt: skip
        r = client.get(url)
        assert r.status_code == 403, url
        assert "token" in r.text
        r = client.get(url, headers={"authorization": "token wrong"})
        assert r.status_code == 403, url
        r = client.get(url, headers={"cookie": f"phonevault-token-{PORT}=wrong"})
        assert r.status_code == 403, url
    assert client.get("/?token=wrong").status_code == 403


def test_token_in_the_url_becomes_a_cookie_and_leaves_the_url(served) -> None:
    client, _repo = served
    r = client.get("/find?q=IMG&token=" + TOKEN)
    assert r.status_code == 303
    assert r.headers["location"] == "/find?q=IMG"  # the token is gone from the address
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"phonevault-token-{PORT}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    r = client.get("/find?q=IMG")  # the client kept the cookie
    assert r.status_code == 200
    # a redirect never leaves this server, whatever the path looks like
    r = client.get("//evil.example/x?token=" + TOKEN)
    assert r.headers["location"].startswith("/") and not r.headers["location"].startswith("//")


def test_host_header_and_methods(client) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"host": f"127.0.0.1:{PORT}"}).status_code == 200
    for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1:9999", "localhost.evil.example"):
        assert client.get("/", headers={"host": host}).status_code == 403, host
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.request(method, "/").status_code == 405
    assert client.head("/").status_code == 200


def test_security_headers(client) -> None:
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp  # no third party of any kind
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    # nothing in a page points anywhere but this server
    for url in re.findall(r'(?:src|href|action)="([^"]*)"', r.text):
        assert url.startswith("/"), url


def test_allowed_hosts() -> None:
    import socket

    from phonevault.cli.web.security import allowed_hosts, ip_literal

    assert allowed_hosts("127.0.0.1", 8765) == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert allowed_hosts("192.0.2.7", 80) == {"192.0.2.7:80", "192.0.2.7"}
    assert allowed_hosts("::1", 8) >= {"[::1]:8"}
    assert f"{socket.gethostname().lower()}:8765" in allowed_hosts("0.0.0.0", 8765)
    assert ip_literal("192.0.2.7:8765", 8765) and ip_literal("[2001:db8::1]:8765", 8765)
    assert not ip_literal("192.0.2.7:8766", 8765) and not ip_literal("evil.example:8765", 8765)
    assert not ip_literal("192.0.2.7", 8765) and ip_literal("192.0.2.7", 80)


def test_listening_everywhere_answers_ip_literals_only(web_vault, tmp_path) -> None:
    with web_vault.open(tmp_path / "cache") as repo:
        app = create_app(Library(repo), token=TOKEN, host="0.0.0.0", port=PORT)
        with TestClient(app, headers={"authorization": f"token {TOKEN}"}) as c:
            assert c.get("/", headers={"host": f"192.0.2.7:{PORT}"}).status_code == 200
            assert c.get("/", headers={"host": f"localhost:{PORT}"}).status_code == 200
            assert c.get("/", headers={"host": f"rebound.example:{PORT}"}).status_code == 403
            assert c.get("/", headers={"host": f"192.0.2.7:{PORT}", "authorization": ""}).status_code == 403


# --- pages -------------------------------------------------------------------------------------------------------
def test_pages(client, web_vault) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert "Margaret" in r.text and "Versions" in r.text and "<svg" in r.text
    key = _device(client)
    snaps = _snapshots(client, key)
    assert len(snaps) == 3
    r = client.get(f"/device/{key}")
    assert r.text.count("browse</a>") == 3 and "current" in r.text
    r = client.get(f"/device/{key}/photos")
    assert r.status_code == 200
    names = set(re.findall(r'data-name="([^"]+)"', r.text))
    assert {"IMG_0001.MOV", "IMG_0003.HEIC", "IMG_0005.HEIC", "IMG_0007.JPG"} <= names
    r = client.get(f"/device/{key}/photos?show=gone")
    gone = set(re.findall(r'data-name="([^"]+)"', r.text))
    assert "IMG_0005.HEIC" in gone and "IMG_0003.HEIC" in gone
    assert not {p.rsplit("/", 1)[1] for p in web_vault.days[2]} & (gone - {"IMG_0004.JPG"})  # edited: old bytes gone
    r = client.get(f"/device/{key}/snap/{snaps[0]}/files")
    assert "CameraRollDomain/" in r.text
    r = client.get(f"/device/{key}/snap/{snaps[0]}/files?path=CameraRollDomain/Media/DCIM/100APPLE")
    assert "IMG_0003.HEIC" in r.text and "download this folder as a zip" in r.text
    r = client.get(f"/device/{key}/diff?s={snaps[2]}&s={snaps[0]}")  # either order: the older one is "from"
    assert r.status_code == 200
    assert re.search(r"From <code>" + snaps[0][:8], r.text)
    assert "IMG_0005.HEIC" in r.text or "IMG_0003.HEIC" in r.text
    assert client.get(f"/device/{key}/diff?s={snaps[0]}").status_code == 400
    r = client.get("/find?q=IMG_0003")
    assert r.status_code == 200 and "IMG_0003.HEIC" in r.text


def test_find_api_lists_every_version_holding_a_file(client) -> None:
    hits = client.get("/api/find?q=IMG_0001.MOV").json()["hits"]  # a substring: the phone's thumbnail matches too
    assert [h["path"] for h in hits] == [
        "CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV",
        "CameraRollDomain/Media/PhotoData/Thumbnails/V2/DCIM/100APPLE/IMG_0001.MOV/5005.JPG",
    ]
    assert len(hits[0]["snapshots"]) == 3 and hits[0]["in_current"]
    hits = client.get("/api/find", params={"q": "*/DCIM/100APPLE/IMG_0001.MOV"}).json()["hits"]  # a glob: whole path
    assert [h["path"] for h in hits] == ["CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.MOV"]
    hits = client.get("/api/find?q=*.HEIC").json()["hits"]
    assert {h["path"].rsplit("/", 1)[1] for h in hits} >= {"IMG_0003.HEIC", "IMG_0005.HEIC"}
    h3 = next(h for h in hits if h["path"].endswith("/IMG_0003.HEIC"))
    assert len(h3["snapshots"]) == 1 and not h3["in_current"]


# --- bytes -------------------------------------------------------------------------------------------------------
def test_thumbnails_from_real_bytes_and_icons_for_videos(served, client, tmp_path) -> None:
    _c, repo = served
    key = _device(client)
    items = client.get(f"/api/device/{key}/photos").json()["items"]
    photos = [i for i in items if i["kind"] == "photo"]
    videos = [i for i in items if i["kind"] == "video"]
    assert photos and videos
    for i in photos:
        r = client.get(f"/device/{key}/thumb/{i['key']}")
        assert r.headers["content-type"] == "image/jpeg", i["name"]
        im = Image.open(io.BytesIO(r.content))
        assert im.format == "JPEG" and max(im.size) <= thumbs.THUMB_PX
        # cached sealed in the vault's cache, under the content key
        assert repo.cache.derived_get(thumbs.cache_key(bytes.fromhex(i["key"]), thumbs.THUMB_PX)) == r.content
        assert client.get(f"/device/{key}/thumb/{i['key']}").content == r.content
    for i in videos:
        r = client.get(f"/device/{key}/thumb/{i['key']}")
        assert r.headers["content-type"] == "image/svg+xml" and b"video" in r.content
    r = client.get(f"/device/{key}/preview/{photos[0]['key']}")
    assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    # Never a plaintext file: no file under the test's folders (the cache among them) holds a thumbnail's bytes.
    made = [client.get(f"/device/{key}/thumb/{i['key']}").content[100:400] for i in photos] + [r.content[100:400]]
    on_disk = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert on_disk and not any(m in data for m in made for data in on_disk)


def test_downloads_are_bit_exact(client, web_vault) -> None:
    key = _device(client)
    snaps = _snapshots(client, key)
    every = {}
    for day in web_vault.days:
        every.update({p: d for p, d in day.items()})
    for i in client.get(f"/api/device/{key}/photos").json()["items"]:
        r = client.get(f"/device/{key}/original/{i['key']}")
        assert r.status_code == 200
        assert "attachment" in r.headers["content-disposition"]
        assert int(r.headers["content-length"]) == len(r.content) == i["size"]
        assert any(day.get(i["path"]) == r.content for day in web_vault.days), i["name"]
    path = "CameraRollDomain/Media/DCIM/100APPLE/IMG_0003.HEIC"
    r = client.get(f"/device/{key}/snap/{snaps[0]}/file", params={"path": path})
    assert r.content == web_vault.days[0][path]
    r = client.get(f"/device/{key}/snap/{snaps[0]}/zip", params={"path": "CameraRollDomain/Media/DCIM"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        got = {"CameraRollDomain/Media/" + n: z.read(n) for n in z.namelist()}
    assert got == web_vault.days[0]


def test_no_url_reaches_the_file_system(client, web_vault) -> None:
    key = _device(client)
    snap = _snapshots(client, key)[0]
    for path in ["../../../../etc/passwd", "/etc/passwd", "CameraRollDomain/../../etc/passwd", "..", "Manifest.db",
                 str(web_vault.folders[0] / "Manifest.db"), "CameraRollDomain/Media/DCIM/%2e%2e/x"]:  # fmt: skip
        for route in ("file", "zip", "files"):
            r = client.get(f"/device/{key}/snap/{snap}/{route}", params={"path": path})
            assert r.status_code == 404, (route, path)
    assert client.get(f"/device/{key}/original/{'0' * 64}").status_code == 404
    assert client.get(f"/device/{key}/thumb/..%2F..%2Fetc").status_code == 404
    assert client.get(f"/device/{'0' * 32}/photos").status_code == 404
    r = client.get(f"/api/device/{'0' * 32}/photos")
    assert r.status_code == 404 and "device" in r.json()["error"]
    assert client.get(f"/device/{key}/snap/nothex/files").status_code == 404


def test_the_vault_is_unchanged(served, client, web_vault) -> None:
    before = _vault_files(web_vault.vault)
    key = _device(client)
    for i in client.get(f"/api/device/{key}/photos").json()["items"]:
        client.get(f"/device/{key}/thumb/{i['key']}")
        client.get(f"/device/{key}/original/{i['key']}")
    client.get(f"/device/{key}/photos?show=gone")
    client.get("/find?q=IMG")
    assert _vault_files(web_vault.vault) == before


def test_the_roll_pages_without_gaps_or_repeats(web_vault, tmp_path) -> None:
    with web_vault.open(tmp_path / "cache") as repo:
        app = create_app(Library(repo), token=TOKEN, hosts=HOSTS, page_size=4)
        with TestClient(app, headers={"authorization": f"token {TOKEN}"}) as c:
            key = _device(c)
            every = [i["key"] for i in c.get(f"/api/device/{key}/photos").json()["items"]]
            first = c.get(f"/device/{key}/photos").text
            seen = re.findall(r'data-key="([0-9a-f]+)"', first)
            url = re.search(r'data-fragment="([^"]+)"', first).group(1).replace("&amp;", "&")
            while url:
                fragment = c.get(url).text
                assert "<html" not in fragment  # a piece for app.js to append, not a page
                seen += re.findall(r'data-key="([0-9a-f]+)"', fragment)
                more = re.search(r'data-fragment="([^"]+)"', fragment)
                url = more.group(1).replace("&amp;", "&") if more else ""
            assert seen == every and len(every) > 8


@pytest.mark.parametrize("walk_over", [8, 1000])
def test_a_folder_zips_whole_and_bit_exact_by_either_plan(client, web_vault, monkeypatch, walk_over) -> None:
    import sqlite3

    from phonevault.cli.web import library

    monkeypatch.setattr(library, "WALK_TREE_OVER", walk_over)  # one tree walk, or a lookup per file
    key = _device(client)
    snap = _snapshots(client, key)[0]
    folder = web_vault.folders[0]
    db = sqlite3.connect(f"file:{folder / 'Manifest.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT fileID, relativePath FROM Files WHERE flags = 1 AND domain = 'HomeDomain'").fetchall()
    finally:
        db.close()
    expected = {f"HomeDomain/{rel}": (folder / fid[:2] / fid).read_bytes() for fid, rel in rows}
    assert len(expected) > 8
    r = client.get(f"/device/{key}/snap/{snap}/zip", params={"path": "HomeDomain"})
    assert r.headers["content-type"] == "application/zip" and "content-length" not in r.headers  # streamed
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        assert z.testzip() is None
        assert {n: z.read(n) for n in z.namelist()} == expected
