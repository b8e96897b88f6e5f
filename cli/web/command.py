"""`phonevault serve`: the web view on 127.0.0.1, behind a random access token.

The socket is bound before the server starts, so the printed URL names the port really served (`--port 0` picks a
free one) and a port in use is one line, not a traceback. The URL carries the token (`secrets.token_urlsafe(32)`,
new every start); it is printed on stdout, as Jupyter does, and nowhere else. Any host other than loopback needs
`--allow-remote` and prints a warning: the token then crosses the network in clear text.

Snapshots the phone encrypted open with its backup password, found as the CLI's browsing commands find it
(`--backup-password`, repeatable; else $PHONEVAULT_BACKUP_PASSWORD, else the first line of
$PHONEVAULT_BACKUP_PASSWORD_FILE), but never asked for: a server has no terminal to ask on, and a password is never
taken from a request (so never from a URL). Without one, those snapshots say they need it. Each keybag's PBKDF2
rounds are paid once per server, at its first read.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
import sys
import webbrowser

import click

from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository
from phonevault.sync.encrypted import BackupPassword

from ..backup_password import backup_password_option
from ..context import secret_from_env, with_repo
from ..render import err, out

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PhonevaultError(f"{host}:{port} is in use; pick another with --port (or --port 0)") from None
        raise PhonevaultError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server_password(given: tuple[str, ...]) -> BackupPassword | None:
    """The backup passwords at hand (see the module docstring), or None; no prompt, ever."""
    passwords = list(given)
    if not passwords and (pw := secret_from_env("PHONEVAULT_BACKUP_PASSWORD")) is not None:
        passwords.append(pw)
    return BackupPassword(passwords, None) if passwords else None


@click.command()
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--allow-remote", is_flag=True, help="Allow a --host other than loopback (the token crosses the network)."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the web view in the default browser.")
@backup_password_option
@with_repo(readonly=True)
def serve(
    repo: Repository, port: int, host: str, allow_remote: bool, open_browser: bool, backup_password: tuple[str, ...]
) -> None:
    """A local web view of the vault: devices, timeline, the camera roll across every version (with the photos no
    longer on the phone), files, diffs and find. Read-only; every request needs the token in the printed URL."""
    if not is_loopback(host):
        if not allow_remote:
            raise click.UsageError(
                f"--host {host} is not this machine's loopback: anyone who can reach it and learns the token sees "
                "the vault; add --allow-remote if that is what you want"
            )
        err.print(
            f"warning: serving on {host}, reachable from the network; the token and everything shown travel "
            "unencrypted (plain HTTP)",
            markup=False,
        )
    # Imported here, not at the top: every command loads this module, and the web stack costs ~0.1 s to import,
    # which a one-photo extract would otherwise pay.
    import uvicorn

    from .app import create_app
    from .library import Library

    sock = bind(host, port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(32)
    shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    url = f"http://{shown_host}:{port}/?token={token}"
    app = create_app(Library(repo, server_password(backup_password)), token=token, host=host, port=port)
    out.print(f"phonevault web view of {repo.backend.location} (read-only)", markup=False, soft_wrap=True)
    out.print(f"open: {url}", markup=False, soft_wrap=True)
    out.print("stop with Ctrl-C", markup=False)
    sys.stdout.flush()
    if open_browser:
        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
