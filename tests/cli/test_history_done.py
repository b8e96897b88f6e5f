"""Every backup a person already has, on its own date, through the real command, as a new user meets it: one
Backup/ folder holding an iOS 17, an iOS 8 and an iPhone OS 3 backup made on different days becomes three
snapshots on those days, in date order, each browsable and exportable bit for bit; deleting one device's backups
and one prune then leave the vault within 5 % of its live data (as `du` counts it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonevault.store.repository import format_time
from phonevault.sync.emulator.legacy import write_ios3_backup, write_ios8_backup
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.emulator.seeds import backup_time
from tests.cli.test_forget_prune import open_library
from tests.cli.test_legacy_import import DCIM, files_of, js
from tests.store.test_delete import du, live_data

# Oldest era first, so date order and era order agree: iPhone OS 3 on day 0, iOS 8 on day 2, iOS 17 on day 5.
DAYS = {"3": 0, "8": 2, "17": 5}


@pytest.fixture(scope="module")
def phones() -> dict[str, SyntheticPhone]:
    return {gen: SyntheticPhone(seed=seed, size=6 << 20) for gen, seed in (("17", 61), ("8", 62), ("3", 63))}


def test_three_generations_take_their_own_dates_and_one_deleted_device_is_freed(pv, cli_env, phones, tmp_path):
    src = tmp_path / "Backup"
    write = {"17": lambda p, d: p.write_backup(src, day=d), "8": lambda p, d: write_ios8_backup(p, src, d),
             "3": lambda p, d: write_ios3_backup(p, src, d)}  # fmt: skip
    folders = {gen: write[gen](phones[gen], DAYS[gen]) for gen in phones}
    before = {gen: files_of(f) for gen, f in folders.items()}
    pv("init", check=True)
    pv("import", str(src), check=True)

    snaps = js(pv("snapshots", "--json"))
    assert [s["device"] for s in snaps] == [phones[g].udid for g in ("3", "8", "17")]  # in date order
    for gen, s in zip(("3", "8", "17"), snaps, strict=True):
        assert s["time"] == format_time(backup_time(DAYS[gen]) * 10**6), (gen, s)  # its own date, not today
        assert s["dated_by"] == ("info-plist" if gen == "3" else "status-plist"), s  # iPhone OS 3 wrote no Status
        assert s["current"]
        photos = [x for x in js(pv("ls", s["id"][:8], DCIM, "--json")) if x["type"] == "file"]
        assert photos, gen  # browsable by domain path
        dest = tmp_path / f"export-{gen}"
        pv("export", s["id"][:8], "--to", str(dest), check=True)
        assert files_of(dest / phones[gen].udid) == before[gen], gen  # bit for bit, modes and mtimes too
        pv("snapshots", f"{phones[gen].udid}", check=True)
        at = js(pv("ls", f"{phones[gen].udid}@{format_time(backup_time(DAYS[gen]) * 10**6)[:10]}", "--json"))
        assert {x["name"] for x in at} >= {"CameraRollDomain"}  # DEVICE@DATE finds it on its own day

    # Apple's "Delete Backup" for the iOS 17 phone, then one prune: its space comes back.
    pv("forget", phones["17"].udid, "--all", "--yes", check=True)
    r = pv("prune", "--json", check=True)
    doc = js(r)
    assert doc["deleted_packs"] >= 1 and doc["pending_packs"] == 0
    assert "pruning: 100 % (" in r.stderr, r.stderr  # progress, as a log or a script sees it (not a terminal)
    with open_library(cli_env, tmp_path) as repo:
        live = live_data(repo)
    assert du(Path(cli_env["PHONEVAULT_REPO"])) <= 1.05 * live, (du(Path(cli_env["PHONEVAULT_REPO"])), live)
    for gen in ("3", "8"):  # the other two untouched
        (s,) = js(pv("snapshots", phones[gen].udid, "--json"))
        dest = tmp_path / f"again-{gen}"
        pv("export", s["id"][:8], "--to", str(dest), check=True)
        assert files_of(dest / phones[gen].udid) == before[gen], gen
    assert js(pv("check", "--read-data", "--json"))["ok"]
