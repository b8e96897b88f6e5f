"""`phonevault import` of a Backup/ folder holding several devices: each folder is tried, every failure is printed
once, and the exit code is the worst folder's (its error type's exit code)."""

from __future__ import annotations

import json

from phonevault.sync.emulator.phone import SyntheticPhone


def test_one_folder_failed_one_had_problems_one_was_fine(pv, tmp_path):
    src = tmp_path / "Backup"
    broken, incomplete, fine = (SyntheticPhone(seed=s, size=1 << 20).write_backup(src, day=0) for s in (31, 32, 33))
    (broken / "Manifest.db").write_bytes(b"garbage" * 1000)
    victim = max(incomplete.glob("??/*"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:100])
    pv("init", check=True)

    r = pv("import", str(src))

    assert r.returncode == 3, (r.stdout, r.stderr)  # the worst of 1 (failed) and 3 (source incomplete)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith("phonevault: ") and "unreadable catalog" in ln]
    partial = [ln for ln in lines if ln.startswith(f"phonevault: {incomplete.name}: 1 problem(s) in the source")]
    assert len(failed) == 1 and str(broken) in failed[0], r.stderr
    assert len(partial) == 1, r.stderr
    assert lines[-1] == partial[0]  # the failure that sets the exit code comes last
    assert any(ln.startswith("warning: ") and victim.name in ln and "truncated" in ln for ln in lines), r.stderr
    devices = {d["device"] for d in json.loads(pv("devices", "--json", check=True).stdout)}
    assert devices == {incomplete.name, fine.name}


def test_a_failure_is_printed_once_and_sets_the_exit_code(pv, tmp_path):
    dev = SyntheticPhone(seed=34, size=1 << 20).write_backup(tmp_path / "Backup", day=0)
    (dev / "Manifest.db").write_bytes(b"garbage" * 1000)
    pv("init", check=True)
    r = pv("import", str(dev))
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("phonevault: ") and "unreadable catalog" in lines[0], r.stderr
