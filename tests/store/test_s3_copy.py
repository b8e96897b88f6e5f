"""`phonevault copy` between vaults with their own passwords, through the real CLI: local → S3 → local (SeaweedFS),
only what the target lacks, nothing on a second run, resumable after SIGKILL, and the copies bit-exact."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import js
from tests.seaweed import Seaweed
from tests.sync.test_mobilesync import tree_digest


def _vault(tmp_path: Path, seaweed: Seaweed, cli_env: dict, pv) -> tuple[dict, dict[str, str]]:
    """A local vault with two phones, one of them backed up on two days; the digest of every snapshot's folder."""
    env = dict(cli_env, **seaweed.env())
    pv("init", env=env, check=True)
    digests: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for seed, days in ((71, (0, 1)), (72, (0,))):
        phone = SyntheticPhone(seed=seed, size=2 << 20)
        for day in days:
            src = phone.write_backup(tmp_path / f"src-{seed}", day=day)
            pv("import", str(src), env=env, check=True)
            # The one snapshot this import added (two imports can commit within the second `committed` shows).
            (new,) = [s for s in js(pv("snapshots", phone.udid, "--json", env=env)) if s["id"] not in seen]
            seen.add(new["id"])
            digests[phone.udid, new["time"]] = tree_digest(src)
    return env, digests


def _exports_match(pv, env: dict, tmp_path: Path, digests: dict) -> None:
    snaps = js(pv("snapshots", "--json", env=env))
    assert sorted((s["device"], s["time"]) for s in snaps) == sorted(digests)
    for s in snaps:
        out = tmp_path / "exports" / s["id"]
        pv("export", s["id"][:8], "--to", str(out), env=env, check=True)
        assert tree_digest(out / s["device"]) == digests[s["device"], s["time"]]


def test_copy_local_to_s3_and_back(pv, cli_env, seaweed: Seaweed, tmp_path: Path) -> None:
    env, digests = _vault(tmp_path, seaweed, cli_env, pv)
    on_s3 = seaweed.location("copy")
    to_s3 = dict(env, PHONEVAULT_TO_PASSWORD="the bucket's own password")
    missing = pv("copy", "--to", on_s3, env=to_s3)
    assert missing.returncode == 10 and "--init" in missing.stderr

    first = js(pv("copy", "--to", on_s3, "--init", "--json", env=to_s3))
    assert len(first["copied"]) == 3 and first["present"] == [] and first["new_bytes"] > 0
    again = js(pv("copy", "--to", on_s3, "--json", env=to_s3))
    assert again["copied"] == [] and len(again["present"]) == 3 and again["new_bytes"] == 0

    s3_env = dict(env, PHONEVAULT_REPO=on_s3, PHONEVAULT_PASSWORD="the bucket's own password")
    assert pv("snapshots", env=dict(s3_env, PHONEVAULT_PASSWORD=env["PHONEVAULT_PASSWORD"])).returncode == 12
    assert js(pv("check", "--read-data", "--json", env=s3_env))["ok"]
    _exports_match(pv, s3_env, tmp_path / "s3", digests)

    # Back to a new local folder, one snapshot named first, then the rest.
    back = tmp_path / "back"
    to_back = dict(s3_env, PHONEVAULT_TO_PASSWORD="a third password")
    snap = js(pv("snapshots", "--json", env=s3_env))[0]
    one = js(pv("copy", snap["id"][:8], "--to", str(back), "--init", "--json", env=to_back))
    assert [c["source"] for c in one["copied"]] == [snap["id"]]
    rest = js(pv("copy", "--to", str(back), "--json", env=to_back))
    assert len(rest["copied"]) == 2 and [c["source"] for c in rest["present"]] == [snap["id"]]
    back_env = dict(env, PHONEVAULT_REPO=str(back), PHONEVAULT_PASSWORD="a third password")
    check = js(pv("check", "--read-data", "--json", env=back_env))
    assert check["ok"] and check["snapshots"] == 3
    _exports_match(pv, back_env, tmp_path / "back-exports", digests)


def test_a_copy_killed_halfway_resumes(pv, cli_env, seaweed: Seaweed, tmp_path: Path) -> None:
    env, digests = _vault(tmp_path, seaweed, cli_env, pv)
    on_s3 = seaweed.location("resume")
    to_s3 = dict(env, PHONEVAULT_TO_PASSWORD="pw of the copy")
    exe = str(Path(sys.executable).with_name("phonevault"))
    p = subprocess.Popen(
        [exe, "copy", "--to", on_s3, "--init"], env=to_s3, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = []
    for line in p.stderr:  # killed once it has handled half the bytes: inside the copy, never before or after
        seen.append(line)
        if (m := re.search(r": (\d+) % \(", line)) and int(m.group(1)) >= 50:
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL, (p.returncode, "".join(seen))

    s3_env = dict(env, PHONEVAULT_REPO=on_s3, PHONEVAULT_PASSWORD="pw of the copy")
    assert js(pv("check", "--json", env=s3_env))["ok"]  # nothing half-copied is visible
    before = len(js(pv("snapshots", "--json", env=s3_env)))
    assert before < 3
    resumed = js(pv("copy", "--to", on_s3, "--json", env=to_s3))
    assert len(resumed["copied"]) == 3 - before and len(resumed["present"]) == before
    assert js(pv("copy", "--to", on_s3, "--json", env=to_s3))["copied"] == []
    assert js(pv("check", "--read-data", "--json", env=s3_env))["ok"]
    _exports_match(pv, s3_env, tmp_path / "exports", digests)
