"""The web view in a real browser (headless Debian Chromium via Selenium) against `phonevault serve`: every page
loads, thumbnails render, a photo deleted on day 2 is found under "not on the phone any more" and downloads bit for
bit, the token is required, and no request leaves 127.0.0.1.

PHONEVAULT_SCREENSHOTS=DIR also saves the screenshots the README shows (web-roll.png, web-timeline.png) there."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .browser import requested_urls, start
from .server import Server, wait_for

DELETED_ON_DAY_2 = "CameraRollDomain/Media/DCIM/100APPLE/IMG_0005.HEIC"


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = start(downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _loaded_images(driver) -> tuple[int, int]:
    return driver.execute_script(
        "const imgs = Array.from(document.querySelectorAll('img.thumb'));"
        "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length];"
    )


def _shot(driver, name: str, tmp: Path) -> None:
    target = Path(os.environ["PHONEVAULT_SCREENSHOTS"]) if os.environ.get("PHONEVAULT_SCREENSHOTS") else tmp
    target.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target / name))
    assert (target / name).stat().st_size > 10_000


def deleted_tile(driver, name: str):
    """The camera roll's tile of `name` once it shows, marked as no longer on the phone."""
    from selenium.webdriver.common.by import By

    tile = wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, f'li.tile[data-name="{name}"]'), what="the deleted photo"
    )[0]
    assert "not on the phone any more" in tile.text
    return tile


def download_from(driver, tile, name: str) -> bytes:
    """Open `tile`'s photo page, wait for its preview to decode, download the original: its bytes."""
    from selenium.webdriver.common.by import By

    tile.find_element(By.TAG_NAME, "a").click()
    preview = wait_for(lambda: driver.find_elements(By.ID, "preview"), what="the photo page")[0]
    wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", preview) > 0, what="the preview")
    driver.find_element(By.ID, "download").click()
    done = driver.downloads / name
    wait_for(lambda: done.exists() and not list(driver.downloads.glob("*.crdownload")), what="the download")
    return done.read_bytes()


def test_the_main_flows_in_a_browser(web_vault, tmp_path, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert DELETED_ON_DAY_2 in web_vault.days[1] and DELETED_ON_DAY_2 not in web_vault.days[2]
    with Server(web_vault.env(tmp_path / "cache")) as server:
        # Without the token: 403, and nothing of the vault on the page.
        browser.get(server.base + "/")
        assert "403" in browser.page_source and "Margaret" not in browser.page_source

        # The printed URL: the token becomes a cookie and leaves the address bar.
        browser.get(server.url)
        wait_for(lambda: "Devices" in browser.title, what="the devices page")
        assert "token=" not in browser.current_url
        assert "Margaret" in browser.find_element(By.CSS_SELECTOR, "section.device h2").text
        assert browser.find_element(By.CSS_SELECTOR, "td.versions").text == "3"
        assert browser.find_elements(By.CSS_SELECTOR, ".chart rect.bar-size")

        # Timeline: three versions; tick two and compare.
        browser.find_element(By.CSS_SELECTOR, "section.device h2 a").click()
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "table.snapshots tbody tr")) == 3, what="rows")
        assert browser.find_element(By.ID, "diff-button").get_property("disabled")
        boxes = browser.find_elements(By.CSS_SELECTOR, "input[name=s]")
        boxes[0].click()
        boxes[2].click()
        _shot(browser, "web-timeline.png", tmp_path)
        browser.find_element(By.ID, "diff-button").click()
        summary = wait_for(lambda: browser.find_elements(By.ID, "diff-summary"), what="the diff")[0].text
        assert "added" in summary and "removed" in summary

        # Camera roll: every thumbnail renders (real pictures and the video icon alike).
        browser.find_element(By.ID, "nav-photos").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "img.thumb"), what="thumbnails")
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        total, loaded = wait_for(lambda: (c := _loaded_images(browser))[0] == c[1] and c, what="every thumbnail")
        assert total == len(browser.find_elements(By.CSS_SELECTOR, "li.tile")) >= 10
        browser.execute_script("window.scrollTo(0, 0)")
        _shot(browser, "web-roll.png", tmp_path)

        # "Not on the phone any more": the photo deleted on day 2 is there; download its original.
        browser.find_element(By.ID, "filter-gone").click()
        name = DELETED_ON_DAY_2.rsplit("/", 1)[1]
        tile = deleted_tile(browser, name)
        assert not browser.find_elements(By.CSS_SELECTOR, 'li.tile[data-name="IMG_0007.JPG"]')  # still on the phone
        assert download_from(browser, tile, name) == web_vault.days[1][DELETED_ON_DAY_2]

        # Files of a version, and find across versions from the search box.
        browser.get(server.base + "/")
        browser.find_element(By.LINK_TEXT, "Files of the current backup").click()
        wait_for(lambda: "CameraRollDomain/" in browser.page_source, what="the domains")
        box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
        box.send_keys("IMG_0003", Keys.ENTER)
        found = wait_for(lambda: browser.find_elements(By.ID, "find-summary"), what="find")[0].text
        assert "IMG_0003" in found
        assert "IMG_0003.HEIC" in browser.find_element(By.CSS_SELECTOR, "table.find").text

        # No request left 127.0.0.1, and no page hit a CSP violation or a script error.
        urls = requested_urls(browser)
        assert urls
        hosts = {urlsplit(u).hostname for u in urls if not u.startswith(("data:", "about:", "chrome"))}
        assert hosts == {"127.0.0.1"}, hosts
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "403" not in e["message"]]
        assert not errors, errors


def test_the_roll_loads_more_as_one_scrolls(web_vault, tmp_path, browser) -> None:
    """app.js appends the next page when its link scrolls into view (a page of 4 here, so the roll has several)."""
    import threading

    import uvicorn
    from selenium.webdriver.common.by import By

    from phonevault.cli.web.app import create_app
    from phonevault.cli.web.command import bind
    from phonevault.cli.web.library import Library

    repo = web_vault.open(tmp_path / "cache")
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(Library(repo), token="tok", port=port, page_size=4)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="the server")
        browser.get(f"http://127.0.0.1:{port}/?token=tok")
        key = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "section.device"), what="devices")[0]
        browser.get(f"http://127.0.0.1:{port}/device/{key.get_attribute('data-device')}/photos")
        total = int(browser.find_element(By.ID, "roll").get_attribute("data-total"))
        assert total > 8

        def tiles():
            return browser.find_elements(By.CSS_SELECTOR, "li.tile")

        # The server sends 4 tiles; app.js appends the rest as the link comes within reach (600 px ahead of the
        # view, so a tall window may fetch several pages before any scroll): scroll until every item is there.
        def all_shown():
            browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            return len(tiles()) == total

        wait_for(all_shown, what="every page appended")
        shown = tiles()
        keys = [t.get_attribute("data-key") for t in shown]
        assert len(set(keys)) == total
        assert not browser.find_elements(By.ID, "more")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        repo.close()


def test_the_demo_story_in_a_browser(tmp_path, browser) -> None:
    """The issue's "done when": a new user (a fresh HOME, no PHONEVAULT_* settings) runs `phonevault demo`, then the
    `phonevault serve` it prints; the camera roll shows real thumbnails (JPEGs decoded by the browser, not the icon),
    and a photo the demo's phone deleted on day 1 is under "not on the phone any more" and downloads bit for bit."""
    import re
    import subprocess
    import sys

    from selenium.webdriver.common.by import By

    from phonevault.cli.sizes import parse_size
    from phonevault.sync.emulator.phone import SyntheticPhone

    size = "16MB"  # its day 1 deletes a photo (smaller phones of this seed delete a video that day)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHONEVAULT", "USBMUXD"))}
    env.update(HOME=str(home), COLUMNS="400", TERM="dumb")
    exe = Path(sys.executable).with_name("phonevault")
    demo = subprocess.run(
        [str(exe), "demo", "--dir", str(tmp_path / "demo"), "--size", size],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    printed = re.search(r"PHONEVAULT_REPO=(\S+) PHONEVAULT_CACHE_DIR=(\S+) phonevault serve --open", demo.stdout)
    assert printed, demo.stdout[-2000:]

    # What the demo's phone (the emulator's default seed) deleted on day 1, and its bytes as the phone had them.
    phone = SyntheticPhone(seed=1, size=parse_size(size))
    day0 = {f.entry.relative_path: f for f in phone.files(0) if f.kind in ("heic", "jpg")}
    day1 = {f.entry.relative_path for f in phone.files(1)}
    deleted = sorted(p for p in day0 if p not in day1)
    assert deleted, "the demo's phone deletes a photo on day 1"
    target = day0[deleted[0]]
    name = target.entry.relative_path.rsplit("/", 1)[1]

    env.update(PHONEVAULT_REPO=printed.group(1), PHONEVAULT_CACHE_DIR=printed.group(2), PHONEVAULT_PASSWORD="demo")
    with Server(env) as server:
        browser.get(server.url)
        wait_for(lambda: "Devices" in browser.title, what="the devices page")
        browser.find_element(By.CSS_SELECTOR, "section.device h2 a").click()
        browser.find_element(By.ID, "nav-photos").click()
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "img.thumb"), what="thumbnails")
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        wait_for(lambda: (c := _loaded_images(browser))[0] == c[1] and c, what="every thumbnail")
        # Each photo's thumbnail is a JPEG made from its bytes, decoded by the browser at the tile's picture size
        # (the icon would be an SVG): real pictures, not placeholders.
        photos = browser.execute_script(
            "return Array.from(document.querySelectorAll('li.tile')).filter(t => !t.querySelector('.badge.video'))"
            ".map(t => { const i = t.querySelector('img.thumb'); return [i.src, i.naturalWidth, i.naturalHeight]; })"
        )
        assert len(photos) >= 3
        for src, w, h in photos:
            kind = browser.execute_async_script(
                "fetch(arguments[0]).then(r => arguments[1](r.headers.get('content-type')))", src
            )
            assert kind == "image/jpeg" and w > 0 and h > 0 and max(w, h) <= 320, (src, kind, w, h)

        browser.find_element(By.ID, "filter-gone").click()
        assert download_from(browser, deleted_tile(browser, name), name) == b"".join(phone.open(target))
