"""Writes tests/data/vault-v1/ and vault-v1.json: a small vault made by the code as it was before records were typed
(commit 003ff20), so tests can prove that vaults made then still open, check clean and export bit-exact.

It was run once, with that commit's code first on the path:
    git archive --prefix=phonevault/ 003ff20 store sync cli | tar -x -C /tmp/pvold
    PYTHONPATH=/tmp/pvold .venv/bin/python tests/data/make_v1_vault.py
Running it again makes a different vault (random keys and ids); the committed one is the fixture.
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from phonevault.store import history
from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree
from phonevault.sync.backup2 import backup_device
from phonevault.sync.emulator import Emulator
from phonevault.sync.export import export_snapshot
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.phone import SyntheticPhone

HERE = Path(__file__).parent
PASSWORD = "fixture password v1"


def digest(repo: Repository, snap) -> dict[str, str]:
    return {
        p: hashlib.sha256(b"".join(repo.read_file(e))).hexdigest()
        for p, e in sorted(load_tree(snap.tree, repo.get_blob).items())
        if not e.is_dir
    }


def main() -> None:
    out = HERE / "vault-v1"
    shutil.rmtree(out, ignore_errors=True)
    work = Path(tempfile.mkdtemp())
    repo = Repository.init(LocalBackend(out), PASSWORD, scrypt_n=2**10, cache_root=work / "cache")
    phone = SyntheticPhone(seed=7, size=1 << 20)
    a = phone.write_backup(work / "a", day=0)
    b = work / "b" / a.name
    shutil.copytree(a, b)  # the same backup, edited: one file gone, one grown, one new (real deltas, few bytes)
    victims = sorted(p for p in b.glob("??/*") if p.is_file())
    victims[0].unlink()
    with open(victims[1], "ab") as f:
        f.write(b"appended on the second import")
    (b / "ff").mkdir(exist_ok=True)
    (b / "ff" / ("ff" * 20)).write_bytes(b"a file only the second import has")
    snaps = [import_folder(repo, folder).snapshot for folder in (a, b, a)]
    view = repo.devices()[0]
    history.tag(repo, view, snaps[0], ["first"])
    history.pin(repo, repo.view(view.key, refresh=True), snaps[0])
    plan = history.plan_forget(repo.view(view.key, refresh=True), None, {snaps[1].id})
    history.apply_forget(repo, plan, "fixture")
    export_snapshot(repo, repo.view(view.key, refresh=True), snaps[2], work / "export")
    history.rollback(repo, repo.view(view.key, refresh=True), snaps[0])
    with Emulator(work / "emulator", seed=7, size=1 << 20) as emu:  # the same phone, now over the wire
        device = backup_device(repo, usbmux_address=emu.address).snapshot
    expected = {
        "password": PASSWORD,
        "devices": len(repo.devices()),
        "snapshots": {
            s.hex: {"files": digest(repo, s), "stats": s.stats, "source": s.source}
            for v in repo.devices()
            for s in v.snapshots
            if not s.forgotten
        },
        "forgotten": [snaps[1].hex],
        "tagged": {snaps[0].hex: ["first"]},
        "pinned": [snaps[0].hex],
        "heads": sorted(v.head.hex() for v in repo.devices()),
        "device_snapshot": device.hex,
        "device_names": sorted(v.info.get("name") for v in repo.devices()),
    }
    (HERE / "vault-v1.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    repo.close()
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
