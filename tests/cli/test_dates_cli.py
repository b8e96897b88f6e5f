"""Every backup on its own date, through the real command: archived Finder backups imported newest first still list
in date order with the newest current, `DEVICE@DATE`, `rollback --to DATE` and retention go by the backups' dates,
legacy folders take their dates from their own plists, and a backup dated in the future is named (exit 3)."""

from __future__ import annotations

import os
import plistlib
from datetime import datetime, timedelta
from pathlib import Path

from phonevault.sync.emulator.legacy import write_ios3_backup, write_ios8_backup
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.emulator.seeds import backup_time
from tests.conftest import js


def set_status_date(folder: Path, when: datetime) -> None:
    path = folder / "Status.plist"
    d = plistlib.loads(path.read_bytes())
    d["Date"] = when  # naive: plistlib writes it as UTC
    path.write_bytes(plistlib.dumps(d, fmt=plistlib.FMT_BINARY))


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_archived_backups_imported_newest_first_take_their_own_dates(pv, tmp_path):
    phone = SyntheticPhone(seed=71, size=1 << 20)
    june1, june4 = datetime(2024, 6, 1, 9, 41), datetime(2024, 6, 4, 20, 5)
    old = phone.write_backup(tmp_path / "archive-0601", day=0)
    new = phone.write_backup(tmp_path / "archive-0604", day=3)
    set_status_date(old, june1)
    set_status_date(new, june4)
    pv("init", check=True)
    first = pv("import", str(new), check=True).stdout
    assert f"of {iso(june4)} — " in first and "files new to this device" in first
    late = pv("import", str(old), check=True).stdout  # the older one arrives last
    # Its counts say what they count against: the newer backup that was current, not one before it.
    assert f"of {iso(june1)} — " in late and f"against the backup of {iso(june4)} (a later backup" in late, late

    snaps = js(pv("snapshots", "--json"))
    assert [(s["time"], s["current"]) for s in snaps] == [(iso(june1), False), (iso(june4), True)]
    older, newer = snaps[0]["id"], snaps[1]["id"]
    assert snaps[0]["committed"] >= snaps[1]["committed"]  # stored last, listed first
    table = pv("snapshots", check=True).stdout
    assert table.index(older[:8]) < table.index(newer[:8])

    udid = phone.udid
    found = js(pv("diff", f"{udid}@2024-06-01", f"{udid}@latest", "--json"))
    assert (found["from"], found["to"]) == (older, newer)
    assert js(pv("diff", f"{udid}@2024-06-03", f"{udid}@2024-06-04", "--json"))["from"] == older

    r = pv("rollback", udid, "--to", "2024-06-02", check=True)
    assert older[:8] in r.stdout and "2024-06-01T09:41:00Z" in r.stdout
    snaps = js(pv("snapshots", "--json"))
    assert [s["id"] for s in snaps if s["current"]] == [older]

    # Retention buckets by the backup's date: the newest day is June 4th, although June 1st was stored last.
    plan = js(pv("forget", "--keep-daily", "1", "--dry-run", "--json"))[0]
    assert plan["reasons"][newer].startswith("keep-daily"), plan
    assert plan["reasons"][older] == "current" and plan["forget"] == []


def test_legacy_folders_take_their_dates_from_their_own_plists(pv, tmp_path):
    src = tmp_path / "Backup"
    ios8, ios3 = SyntheticPhone(seed=72, size=1 << 20), SyntheticPhone(seed=73, size=1 << 20)
    write_ios8_backup(ios8, src, day=2)
    write_ios3_backup(ios3, src, day=5)
    pv("init", check=True)
    pv("import", str(src), check=True)
    times = {s["device"]: s["time"] for s in js(pv("snapshots", "--json"))}
    assert times == {
        ios8.udid: iso(datetime(1970, 1, 1) + timedelta(seconds=backup_time(2))),  # Status.plist's Date
        ios3.udid: iso(datetime(1970, 1, 1) + timedelta(seconds=backup_time(5))),  # Info.plist's Last Backup Date
    }


def test_a_backup_dated_in_the_future_is_named_and_dated_by_the_next_plist(pv, tmp_path):
    phone = SyntheticPhone(seed=74, size=1 << 20)
    folder = phone.write_backup(tmp_path / "src", day=1)
    set_status_date(folder, datetime.now() + timedelta(days=30))
    pv("init", check=True)
    r = pv("import", str(folder))
    assert r.returncode == 3, (r.stdout, r.stderr)
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Status.plist's Date is" in warnings[0] and "in the future" in warnings[0]
    [snap] = js(pv("snapshots", "--json"))
    assert snap["time"] == iso(datetime(1970, 1, 1) + timedelta(seconds=backup_time(1)))  # Manifest.plist's Date


def test_a_backup_with_no_dates_is_dated_by_its_newest_file(pv, tmp_path):
    phone = SyntheticPhone(seed=75, size=1 << 20)
    folder = phone.write_backup(tmp_path / "src", day=0)
    for name in ("Status.plist", "Manifest.plist"):
        d = plistlib.loads((folder / name).read_bytes())
        del d["Date"]
        (folder / name).write_bytes(plistlib.dumps(d, fmt=plistlib.FMT_BINARY))
    stamp = datetime(2024, 5, 30, 7, 0)
    for p in folder.rglob("*"):
        if p.is_file():
            os.utime(p, (stamp.timestamp() - 3600, (stamp - datetime(1970, 1, 1)).total_seconds()))
    pv("init", check=True)
    r = pv("import", str(folder))
    assert r.returncode == 3 and "dated by its newest file's mtime, 2024-05-30T07:00:00Z" in r.stderr, r.stderr
    assert js(pv("snapshots", "--json"))[0]["time"] == iso(stamp)
