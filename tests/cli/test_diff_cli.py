"""`phonevault diff` through the real command: by content (a restore and a new backup that rewrote every file with
the same bytes shows nothing modified; --metadata lists those files apart), filtered by domain path, and --stat with
counts and bytes per domain, as a table and as JSON."""

from __future__ import annotations

import os
import shutil

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import js


def domain_of(path: str) -> str | None:
    """A domain path's domain; None for a backup-folder file (Manifest.db, Info.plist, …)."""
    return path.split("/", 1)[0] if "/" in path else None


def test_diff_by_content_by_path_and_per_domain(pv, tmp_path):
    phone = SyntheticPhone(seed=91, size=1 << 20)
    day0 = phone.write_backup(tmp_path / "d0", day=0)
    pv("init", check=True)
    pv("import", str(day0), check=True)
    # The folder after a restore and the next backup on the same day: every file written anew, the same bytes.
    again = tmp_path / "again" / phone.udid
    shutil.copytree(day0, again, copy_function=shutil.copyfile)
    for p in again.rglob("*"):
        if p.is_file():
            os.utime(p, (1_800_000_000, 1_800_000_000))
    pv("import", str(again), check=True)
    a, b = (s["id"][:8] for s in js(pv("snapshots", "--json")))

    assert js(pv("diff", a, b, "--json"))["changes"] == []
    text = pv("diff", a, b, check=True).stdout.splitlines()
    assert text[-1].startswith("0 added, 0 removed, 0 modified; ") and "--metadata lists them" in text[-1]
    meta = js(pv("diff", a, b, "--metadata", "--json"))["changes"]
    assert meta and {c["change"] for c in meta} == {"metadata"}
    assert all(c["old_size"] == c["new_size"] for c in meta)
    assert any(c["path"].startswith("CameraRollDomain/Media/") for c in meta)
    listed = pv("diff", a, b, "--metadata", check=True).stdout.splitlines()
    assert len(listed) == len(meta) + 1 and all(line.startswith("~ ") for line in listed[:-1])

    # A day later: real changes, filtered by domain path and counted per domain.
    phone.write_backup(tmp_path / "d0", day=2)
    pv("import", str(day0), check=True)
    c = js(pv("snapshots", "--json"))[-1]["id"][:8]
    every = js(pv("diff", a, c, "--json"))["changes"]
    media = js(pv("diff", a, c, "CameraRollDomain/Media", "--json"))["changes"]
    assert media == [x for x in every if x["path"].startswith("CameraRollDomain/Media/")] and media
    assert {x["change"] for x in every} >= {"added", "modified"}

    stat = js(pv("diff", a, c, "--stat", "--json"))
    assert stat["from"].startswith(a) and stat["to"].startswith(c)
    assert all(
        set(d) == {"domain", "added", "removed", "modified", "added_bytes", "removed_bytes"} for d in stat["domains"]
    )
    for d in stat["domains"]:
        mine = [x for x in every if domain_of(x["path"]) == d["domain"]]
        for kind in ("added", "removed", "modified"):
            assert d[kind] == sum(x["change"] == kind for x in mine), (d, kind)
        assert d["added_bytes"] == sum(x["new_size"] for x in mine if x["change"] == "added")
        assert d["removed_bytes"] == sum(x["old_size"] for x in mine if x["change"] == "removed")
    assert sum(d["added"] + d["removed"] + d["modified"] for d in stat["domains"]) == len(every)
    table = pv("diff", a, c, "--stat", check=True).stdout
    assert "CameraRollDomain" in table and "total" in table and "added bytes" in table

    r = pv("diff", a, c, "CameraRolDomain")
    assert r.returncode == 1 and r.stderr.strip() == "phonevault: CameraRolDomain: not in either snapshot's files"
