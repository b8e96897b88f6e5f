"""`phonevault forget` and `prune` as a user meets them: forget says why it keeps what it keeps; `forget DEVICE --all`
is Apple's "Delete Backup" (asks first); one `prune` with no backup running frees the space; with one running it
says what waits and until when. "Live data" is defined in tests/store/test_delete.py (`live_data`)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from phonevault.store.backends.local import LocalBackend
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import PASSWORD, js
from tests.store.test_delete import du, live_data
from tests.sync.test_mobilesync import tree_digest


def one_line(r, code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("importing", "note:"))]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def vault(pv, tmp_path):
    """A vault with two phones: Ada's (two daily backups) and Bo's (one)."""
    ada, bo = SyntheticPhone(seed=31, size=3 << 20), SyntheticPhone(seed=32, size=6 << 20)
    pv("init", check=True)
    for day in (0, 1):
        pv("import", str(ada.write_backup(tmp_path / f"ada{day}", day=day)), check=True)
    bo_folder = bo.write_backup(tmp_path / "bo", day=0)
    pv("import", str(bo_folder), check=True)
    return ada, bo, bo_folder


def snaps(pv, device: str | None = None) -> list[dict]:
    return js(pv("snapshots", *([device] if device else []), "--json"))


def open_library(cli_env, tmp_path) -> Repository:
    return Repository.open(LocalBackend(Path(cli_env["PHONEVAULT_REPO"])), PASSWORD, cache_root=tmp_path / "lib")


def test_forget_of_a_devices_only_snapshot_says_why_it_is_kept(pv, vault):
    _ada, bo, _ = vault
    (only,) = snaps(pv, bo.udid)
    r = pv("forget", only["id"][:8])
    one_line(r, 1, "not forgotten", only["id"][:8], "last snapshot")
    assert "last snapshot" in r.stdout and f"forget '{bo.device_info().name}' --all" in r.stdout
    doc = json.loads(pv("forget", only["id"][:8], "--json").stdout)
    assert doc == [
        {
            "device": bo.udid,
            "keep": [only["id"]],
            "forget": [],
            "dry_run": False,
            "reasons": {only["id"]: "last snapshot"},
            "current": only["id"],
        }
    ]
    assert snaps(pv, bo.udid) == [only]
    plan = js(pv("forget", "--keep-last", "1", "--dry-run", "--json"))
    reasons = {k: v for p in plan for k, v in p["reasons"].items()}
    assert reasons[only["id"]] == "current, keep-last 1"
    assert sorted(reasons.values()) == ["current, keep-last 1", "current, keep-last 1", "no keep rule"]


def test_forgetting_the_current_backup_makes_the_previous_one_current(pv, vault):
    ada, _bo, _ = vault
    day0, day1 = snaps(pv, ada.udid)
    assert (day0["current"], day1["current"]) == (False, True)
    r = pv("forget", day1["id"][:8], check=True)
    assert f"current backup is now {day0['id'][:8]}" in r.stdout
    assert [(s["id"], s["current"]) for s in snaps(pv, ada.udid)] == [(day0["id"], True)]
    row = next(d for d in js(pv("devices", "--json")) if d["device"] == ada.udid)
    assert (row["snapshots"], row["current_snapshot"]) == (1, day0["id"])


def test_forget_all_asks_first_and_names_what_it_would_forget(pv, vault, cli_env):
    ada, bo, _ = vault
    before = snaps(pv)
    r = pv("forget", ada.udid, "--all", stdin=subprocess.DEVNULL)  # a script, no terminal: no silent deletion
    one_line(r, 1, "--yes", "all 2 snapshot(s)", "nothing was changed")
    one_line(pv("forget", "no-such-phone", "--all", "--yes"), 1, "no-such-phone", "no such device")
    usage = pv("forget", "--all", "--yes")
    assert usage.returncode == 2 and "--all needs the DEVICE" in usage.stderr
    assert snaps(pv) == before
    # On a terminal it asks; "n" changes nothing, "y" forgets.
    r = _on_a_terminal(cli_env, ["forget", ada.device_info().name, "--all"], b"n\n")
    assert r.returncode == 1 and "all 2 snapshot(s)" in r.stderr and "not confirmed" in r.stderr, r.stderr
    assert snaps(pv) == before
    r = _on_a_terminal(cli_env, ["forget", ada.device_info().name, "--all"], b"y\n")
    assert r.returncode == 0 and "forgot 2" in r.stdout, (r.stdout, r.stderr)
    assert {s["device"] for s in snaps(pv)} == {bo.udid}


def _on_a_terminal(env: dict, args: list[str], typed: bytes) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("phonevault")
    master, slave = pty.openpty()
    try:
        os.write(master, typed)
        return subprocess.run(
            [str(exe), *args], env=env, stdin=slave, capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        os.close(slave)
        os.close(master)


def test_forget_all_refuses_pinned_snapshots_unless_told_to_unpin_them(pv, vault):
    ada, _bo, _ = vault
    day0, _day1 = snaps(pv, ada.udid)
    pv("pin", day0["id"][:8], check=True)
    one_line(pv("forget", ada.udid, "--all", "--yes"), 1, "pinned", day0["id"][:8], "--unpin")
    assert len(snaps(pv, ada.udid)) == 2
    doc = js(pv("forget", ada.udid, "--all", "--yes", "--unpin", "--json"))
    assert doc[0]["keep"] == [] and doc[0]["current"] is None and set(doc[0]["reasons"].values()) == {"all"}


def test_delete_backup_then_one_prune_frees_the_space_and_the_other_phone_is_whole(pv, vault, cli_env, tmp_path):
    ada, bo, bo_folder = vault
    r = pv("forget", ada.device_info().name, "--all", "--yes", check=True)
    assert "no current backup is left" in r.stdout
    assert {s["device"] for s in snaps(pv)} == {bo.udid}
    ada_row = next(d for d in js(pv("devices", "--json")) if d["device"] == ada.udid)
    assert (ada_row["snapshots"], ada_row["current_snapshot"], ada_row["latest_backup"]) == (0, None, None)
    doc = js(pv("prune", "--json"))  # the default: no backup running, so in one run
    assert doc["deleted_packs"] >= 1 and doc["pending_packs"] == doc["held_packs"] == 0
    with open_library(cli_env, tmp_path) as repo:
        live = live_data(repo)
    vault_du = du(Path(cli_env["PHONEVAULT_REPO"]))
    assert doc["live_bytes"] == live and vault_du <= 1.05 * live, (vault_du, live)
    (bo_snap,) = snaps(pv)
    pv("export", bo_snap["id"][:8], "--to", str(tmp_path / "out"), check=True)
    assert tree_digest(tmp_path / "out" / bo.udid) == tree_digest(bo_folder)
    report = js(pv("check", "--read-data", "--json"))
    assert report["ok"] and report["errors"] == []


def test_prune_while_a_backup_runs_says_what_waits_and_a_prune_after_it_frees_it(pv, vault, cli_env, tmp_path):
    ada, _bo, _ = vault
    pv("forget", ada.udid, "--all", "--yes", check=True)
    with open_library(cli_env, tmp_path) as repo:
        w = SnapshotWriter(repo, ada.udid, DeviceRecord("Ada’s iPhone"), incremental=False)  # a backup, running
        try:
            r = pv("prune", check=True)
            assert "1 backup(s) running (started " in r.stdout and "a prune after that frees them" in r.stdout
            doc = js(pv("prune", "--json"))
            assert doc["held_packs"] >= 1 and doc["deleted_packs"] == 0 and len(doc["running_since"]) == 1
        finally:
            w.close()
        doc = js(pv("prune", "--json"))
        assert doc["held_packs"] == 0 and doc["deleted_packs"] >= 1
        assert du(Path(cli_env["PHONEVAULT_REPO"])) <= 1.05 * live_data(repo)
    assert js(pv("check", "--read-data", "--json"))["ok"]
