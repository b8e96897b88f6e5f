"""Dedup across the phone's encryption: bytes each tool's repository grows by, for backups of an encrypted phone.

    .venv/bin/python benchmarks/encrypted_bench.py [--size 32MiB] [--seed 7] [--workdir DIR] [--out FILE.json]

The phone is the emulator's synthetic phone (sync/emulator/phone.py) on day 0, written three times as a MobileSync
folder: encrypted (`a`), encrypted again as its next full backup (`b`: every file and Manifest.db under fresh keys
of their own, wrapped by the same class keys, which is what a phone does on a full backup or a password change), and
plain (`plain`: the same content without a backup password). Each tool backs up, into a new repository, `a` then
`b` (a second full backup of the encrypted phone), and into another new repository `a` then `plain` (the same photos
in an encrypted and a plain backup). What is reported is the growth of the repository directory, in bytes:
  phonevault                    `import` (the encrypted backup stored as the phone sent it, the default)
  phonevault --store-decrypted  `import --store-decrypted` for the encrypted folders (sync/decrypted.py)
  restic, borg                  `backup`/`create` of the same folders (tools.py; installed from Debian if missing)
For reference, in the same run, each tool's second full backup of the plain phone (`plain` twice, from two paths).
Over the wire (phonevault only: the peers back up folders): the emulator (sync/emulator) with encryption turned on,
`backup` then `backup --full` (the phone draws fresh keys for every file), with and without --store-decrypted
(which holds the files in a sealed local spool until Manifest.db comes, sync/decrypted.py `Holding`).
Results print as one JSON document (and go to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tools import Borg, Phonevault, Restic, ensure_peer, tool_version  # noqa: E402

from phonevault.sync.emulator.phone import SyntheticPhone  # noqa: E402
from phonevault.sync.emulator.rekey import rekey_folder  # noqa: E402

BACKUP_PASSWORD = "benchmark backup password"


def rekeyed(src: Path, dst: Path, password: str, salt: bytes) -> Path:
    """A copy of the encrypted folder `src` at `dst` as the phone's next full backup writes it."""
    shutil.copytree(src, dst)
    return rekey_folder(dst, password, salt)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(cmd, env: dict[str, str]) -> None:
    r = subprocess.run(list(cmd.argv), cwd=cmd.cwd, env=env, capture_output=True, text=True, check=False)
    if r.returncode not in (0, 3):  # 3: phonevault stored everything and names a problem
        raise SystemExit(f"{' '.join(map(str, cmd.argv))} -> {r.returncode}\n{r.stderr[-2000:]}")


def growth(make, work: Path, folders: list[Path], decrypted: bool) -> list[int]:
    """Bytes the repository grows by with each folder backed up in turn (a new repository)."""
    shutil.rmtree(work, ignore_errors=True)
    tool = make(work / "repo", work)
    if decrypted:
        tool.env["PHONEVAULT_BACKUP_PASSWORD"] = BACKUP_PASSWORD
    run(tool.init(), tool.env)
    sizes = [du(tool.repo)]
    for folder in folders:
        cmd = tool.backup(folder)
        if decrypted and "encrypted" in folder.parent.name:
            cmd = type(cmd)([*cmd.argv, "--store-decrypted"], cmd.cwd)
        run(cmd, tool.env)
        sizes.append(du(tool.repo))
    shutil.rmtree(work, ignore_errors=True)
    return [b - a for a, b in zip(sizes, sizes[1:], strict=False)]


def device_growth(root: Path, size: int, seed: int, decrypted: bool) -> list[int]:
    """Bytes the vault grows by with a first and a second full device backup of the encrypted emulated phone."""
    from phonevault.sync.emulator import Emulator

    work = root / "device"
    shutil.rmtree(work, ignore_errors=True)
    pv = Phonevault(work / "repo", work)
    with Emulator(work / "phone", seed=seed, size=size) as phone:
        env = pv.env | {"USBMUXD_SOCKET_ADDRESS": phone.address, "PHONEVAULT_BACKUP_PASSWORD": BACKUP_PASSWORD}
        run(pv.init(), env)
        run(
            type(pv.init())(pv._pv("device", "encryption", "on")),
            env | {"PHONEVAULT_NEW_BACKUP_PASSWORD": BACKUP_PASSWORD},
        )
        opt = ["--store-decrypted"] if decrypted else []
        sizes = [du(pv.repo)]
        for full in ([], ["--full"]):
            run(type(pv.init())(pv._pv("backup", *full, *opt)), env)
            sizes.append(du(pv.repo))
    shutil.rmtree(work, ignore_errors=True)
    return [b - a for a, b in zip(sizes, sizes[1:], strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="32MiB", help="the phone's size (MiB)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    size = int(args.size.removesuffix("MiB")) << 20
    root = args.workdir or Path(tempfile.mkdtemp(prefix="encrypted-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    phone = SyntheticPhone(args.seed, size, password=BACKUP_PASSWORD)
    a = phone.write_backup(root / "encrypted-a", 0)
    b = rekeyed(a, root / "encrypted-b" / a.name, BACKUP_PASSWORD, b"second full backup")
    plain = SyntheticPhone(args.seed, size).write_backup(root / "plain", 0)
    plain2 = root / "plain-again" / plain.name
    shutil.copytree(plain, plain2)

    tools = {"phonevault": (Phonevault, False), "phonevault --store-decrypted": (Phonevault, True)}
    skipped = {}
    for peer, cls in (("restic", Restic), ("borg", Borg)):
        if why := ensure_peer(peer):
            skipped[peer] = why
        else:
            tools[peer] = (cls, False)
    rows = {}
    for name, (make, decrypted) in tools.items():
        work = root / "work" / name.replace(" ", "_")
        first, second = growth(make, work, [a, b], decrypted)
        _, plain_after = growth(make, work, [a, plain], decrypted)
        _, plain_again = growth(make, work, [plain, plain2], decrypted)
        rows[name] = {
            "first encrypted backup": first,
            "second full encrypted backup": second,
            "plain backup after the encrypted one": plain_after,
            "reference: second full plain backup": plain_again,
        }
    for name, decrypted in (("phonevault backup", False), ("phonevault backup --store-decrypted", True)):
        first, second = device_growth(root, size, args.seed, decrypted)
        rows[name] = {"first encrypted backup": first, "second full encrypted backup": second}
    doc = {
        "phone": {"seed": args.seed, "bytes": size, "files": sum(1 for p in a.glob("??/*"))},
        "versions": {"restic": tool_version(["restic", "version"]), "borg": tool_version(["borg", "--version"])},
        "skipped": skipped,
        "bytes_added": rows,
        "seconds": round(time.time() - started, 1),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
