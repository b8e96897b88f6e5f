"""`phonevault demo`: the whole story on a synthetic phone, with no phone and no vault needed.

Each step is a real command, run in-process exactly as a user would type it (and printed as such), against a fresh
vault in a new directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import click

from phonevault.sync.phone import SyntheticPhone, parse_size

from .render import out


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@click.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), help="Where to put everything.")
@click.option("--size", default="64MB", show_default=True, help="Size of the synthetic phone.")
@click.pass_context
def demo(ctx: click.Context, workdir: Path | None, size: str) -> None:
    """Back up a synthetic iPhone twice, browse, diff, extract, roll back, export and check — in a fresh vault."""
    from .main import cli  # the same command tree the user types into

    started = time.monotonic()
    work = workdir or Path(tempfile.mkdtemp(prefix="phonevault-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    vault, finder = work / "vault", work / "MobileSync" / "Backup"
    os.environ["PHONEVAULT_REPO"] = str(vault)
    os.environ.setdefault("PHONEVAULT_PASSWORD", "demo")
    os.environ.setdefault("PHONEVAULT_CACHE_DIR", str(work / "cache"))
    out.print(f"[bold]phonevault demo[/] in {work}  (vault: {vault}, password: $PHONEVAULT_PASSWORD or 'demo')\n")

    def run(*args: str, note: str = "") -> None:
        out.print(f"\n[bold cyan]$ phonevault {' '.join(args)}[/]" + (f"   [dim]# {note}[/]" if note else ""))
        try:
            cli.main(list(args), standalone_mode=False)
        except SystemExit as e:
            if e.code not in (0, None):
                raise

    phone = SyntheticPhone(seed=1, size=parse_size(size))
    out.print(f"a synthetic {phone.device_info().product_type} backs up to {finder} (day 0) …")
    device_dir = phone.write_backup(finder, day=0)
    day0 = _digest(device_dir)
    run("init", note="a new encrypted vault")
    run("import", str(finder), note="day 0: Finder's backup folder becomes a dated snapshot")
    out.print("\na day passes: new photos, an edited one, deleted ones, messages … Finder overwrites its folder.")
    phone.write_backup(finder, day=1)
    run("import", str(finder), note="day 1: only what changed is stored")
    run("devices")
    run("snapshots")
    run("diff", _first_snapshot(), f"{phone.udid[:8]}@latest", note="what changed between the two days")
    run("ls", f"{phone.udid[:8]}@latest", "CameraRollDomain/Media/DCIM/100APPLE")
    photo = _a_photo(phone)
    run("extract", f"{phone.udid[:8]}@latest", photo, "--to", str(work / "extracted"), note="one photo, by its name")
    run("rollback", phone.udid[:8], "--to", _first_snapshot(), note="day 0 becomes current; day 1 stays")
    run("snapshots")
    run("export", f"{phone.udid[:8]}@current", "--to", str(work / "restored"), note="a folder Finder can restore")
    same = _digest(work / "restored" / phone.udid) == day0
    out.print(f"exported folder identical to the day-0 original: [bold]{'yes' if same else 'NO'}[/]")
    run("forget", "--keep-last", "1", note="retention: pinned and current snapshots always stay")
    run("prune", "--grace", "0")
    run("stats")
    run("check", "--read-data")
    out.print(f"\ndemo finished in {time.monotonic() - started:.1f} s; everything is in {work}")
    if not same:
        raise click.ClickException("exported folder differs from the original")


def _first_snapshot() -> str:
    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.repository import Repository

    with Repository.open(LocalBackend(Path(os.environ["PHONEVAULT_REPO"])), os.environ["PHONEVAULT_PASSWORD"]) as repo:
        view = repo.devices()[0]
        return view.live()[0].hex[:8]


def _a_photo(phone: SyntheticPhone) -> str:
    for f in phone.files(1):
        if f.relative_path.startswith("Media/DCIM/") and f.relative_path.endswith(".HEIC"):
            return f"{f.domain}/{f.relative_path}"
    raise click.ClickException("the synthetic phone has no photo")
