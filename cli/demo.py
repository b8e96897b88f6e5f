"""`phonevault demo`: the whole story on the built-in emulator, with no phone and no vault needed.

An emulated iPhone (usbmuxd + TLS lockdownd + MobileBackup2 on 127.0.0.1) is backed up on two days into a fresh
vault; then every step is a real command, run in-process exactly as a user would type it (and printed as such).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import click

from phonevault.store.backends import open_backend
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree

from .render import out
from .sizes import parse_size


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), help="Where to put everything.")
@click.option("--size", default="64MB", show_default=True, help="Size of the emulated phone.")
def demo(workdir: Path | None, size: str) -> None:
    """Back up an emulated iPhone on two days; browse, diff, extract, roll back, restore, export and check."""
    from phonevault.sync.emulator import Emulator

    from .main import cli  # the same command tree the user types into

    started = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix="phonevault-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    vault = work / "vault"
    os.environ["PHONEVAULT_REPO"] = str(vault)
    os.environ.setdefault("PHONEVAULT_PASSWORD", "demo")
    os.environ.setdefault("PHONEVAULT_CACHE_DIR", str(work / "cache"))

    def run(*args: str, note: str = "") -> None:
        out.print(f"\n[bold cyan]$ phonevault {' '.join(args)}[/]" + (f"   [dim]# {note}[/]" if note else ""))
        try:
            cli.main(list(args), standalone_mode=False)
        except SystemExit as e:
            if e.code not in (0, None):
                raise

    with Emulator(work / "emulator", size=parse_size(size), day=0) as emu:
        os.environ["USBMUXD_SOCKET_ADDRESS"] = emu.address
        out.print(
            f"[bold]phonevault demo[/] in {work}\n"
            f"vault: {vault} (password: $PHONEVAULT_PASSWORD or 'demo')\n"
            f"an emulated iPhone is plugged in: usbmuxd at {emu.address} (USBMUXD_SOCKET_ADDRESS), udid {emu.udid}"
        )
        udid = emu.udid[:8]
        run("init", note="a new encrypted vault")
        run("backup", note="day 0: the first backup is full")
        out.print("\n[dim]a day passes: new photos, an edited one, deleted ones, new messages …[/]")
        emu.set_day(1)
        run("backup", note="day 1: the phone sends only what changed; day 0 stays")
        run("devices")
        run("snapshots")
        first, second = _snapshot_ids()
        run("diff", first, second, note="what changed between the two days")
        run("ls", f"{udid}@latest", "CameraRollDomain/Media/DCIM/100APPLE")
        run("extract", f"{udid}@latest", _a_photo(), "--to", str(work / "extracted"), note="a photo, at its full path")
        run("rollback", udid, "--to", first, note="day 0 becomes current again; day 1 stays in the vault")
        run("restore", f"{udid}@current", "--no-reboot", "--yes", note="the phone gets day 0 back")
        same = _device_equals_snapshot(emu.device_dir, first)
        out.print(f"the phone's content now equals snapshot {first}: [bold]{'yes' if same else 'NO'}[/]")
        # A day on from the restore, so the photos deleted on day 1 are gone from the current backup again: the
        # web view lists them under "not on the phone any more", the one place they still exist.
        out.print("\n[dim]another day: more photos taken, the ones deleted on day 1 gone again …[/]")
        emu.set_day(2)
        run("backup", note="day 2: the photos deleted on day 1 now live only in the vault")
        run("export", f"{udid}@current", "--to", str(work / "export"), note="a folder Finder/iTunes can restore")
        run("tag", second, "after-the-trip")
        run("forget", "--keep-last", "1", "--dry-run", note="retention never forgets the current or pinned")
        run("stats")
        run("check", "--read-data")
    out.print(f"\ndemo finished in {time.monotonic() - started:.1f} s; everything is in {work}")
    out.print(
        "see every version in your browser (password: demo):\n"
        f"  PHONEVAULT_REPO={vault} PHONEVAULT_CACHE_DIR={work / 'cache'} phonevault serve --open",
        markup=False,
        soft_wrap=True,
    )
    if not same:
        raise click.ClickException("the restored phone differs from the snapshot")


def _open() -> Repository:
    return Repository.open(open_backend(os.environ["PHONEVAULT_REPO"]), os.environ["PHONEVAULT_PASSWORD"])


def _snapshot_ids() -> tuple[str, str]:
    with _open() as repo:
        live = repo.devices()[0].live()
        return live[0].hex[:8], live[-1].hex[:8]


def _device_equals_snapshot(device_dir: Path, snapshot: str) -> bool:
    """Every phone file of the snapshot (the xx/ folders and Manifest.db) is on the emulated phone, byte for byte."""
    with _open() as repo:
        snap = next(s for s in repo.devices()[0].snapshots if s.hex.startswith(snapshot))
        for path, entry in load_tree(snap.tree, repo.get_blob).items():
            if entry.is_dir or ("/" not in path and path != "Manifest.db"):
                continue
            h = hashlib.sha256()
            for chunk in repo.read_file(entry):
                h.update(chunk)
            target = device_dir / path
            if not target.is_file() or hashlib.sha256(target.read_bytes()).digest() != h.digest():
                return False
    return True


def _a_photo() -> str:
    from phonevault.sync.catalog import load_catalog

    with _open() as repo:
        view = repo.devices()[0]
        for c in load_catalog(repo, view.live()[-1]):
            if c.relative_path.startswith("Media/DCIM/") and c.relative_path.endswith((".HEIC", ".JPG")):
                return f"{c.domain}/{c.relative_path}"
    raise click.ClickException("the phone has no photo")
