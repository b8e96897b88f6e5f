"""`phonevault serve` through the real console script: the printed URL, 403 without its token, loopback only."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .server import Server


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_serve_prints_a_token_url_and_refuses_everything_else(web_vault, tmp_path) -> None:
    with Server(web_vault.env(tmp_path / "cache")) as server:
        assert server.base.startswith("http://127.0.0.1:")
        assert len(server.token) >= 40
        assert "read-only" in "".join(server.lines)
        status, _h, body = _get(server.base + "/")
        assert status == 403 and b"token" in body
        status, headers, _body = _get(server.url)
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"].split(";", 1)[0]
        status, _h, body = _get(server.base + "/", {"Cookie": cookie})
        assert status == 200 and b"Margaret" in body
        status, _h, _b = _get(server.base + "/api/devices", {"Authorization": "token " + server.token})
        assert status == 200
        port = server.base.rsplit(":", 1)[1]
        status, _h, _b = _get(server.base + "/", {"Cookie": cookie, "Host": f"rebound.example:{port}"})
        assert status == 403
    with Server(web_vault.env(tmp_path / "cache")) as again:
        assert again.token != server.token  # a new token every start


def test_serve_refuses_a_public_host_without_the_flag(web_vault, tmp_path) -> None:
    exe = Path(sys.executable).with_name("phonevault")
    r = subprocess.run(
        [str(exe), "serve", "--host", "0.0.0.0", "--port", "0"],
        env=web_vault.env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "--allow-remote" in r.stderr and "token=" not in r.stdout


def test_which_hosts_are_loopback() -> None:
    from phonevault.cli.web.command import is_loopback

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "10.0.0.1", "example.org", ""):
        assert not is_loopback(host), host
