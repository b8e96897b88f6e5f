"""A server that ignores `If-None-Match: *` is refused for writing (store/backends/s3.py probes before the first
write), and still read (`export` records the export in the vault, so it is a writing
command there: it is refused too). The server is real: SeaweedFS behind a loopback proxy that strips the header
(tests/store/s3proxy.py), so conditional PUTs arrive as plain PUTs, as on a store without conditional writes.
"""

from __future__ import annotations

import json
import subprocess

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.seaweed import Seaweed
from tests.store.s3proxy import strip_conditional_writes


def objects(seaweed: Seaweed, prefix: str) -> dict[str, str]:
    """Every object under a vault's prefix, name -> ETag, straight from the server."""
    found = {}
    for page in seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=seaweed.bucket, Prefix=prefix + "/"):
        found.update((o["Key"], o["ETag"]) for o in page.get("Contents", []))
    return found


def refused(r: subprocess.CompletedProcess) -> None:
    """Exit 1 and one error line, the last (a backup says which phone it reached before it)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("phonevault:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    assert "does not honour conditional writes" in errors[0], r.stderr


def test_a_server_ignoring_if_none_match_is_refused_for_writing_and_still_read(pv, cli_env, seaweed, tmp_path):
    env = dict(cli_env, **seaweed.env())
    direct = seaweed.location("cond")
    prefix = direct.split(f"/{seaweed.bucket}/", 1)[1]
    phone = SyntheticPhone(seed=53, size=2 << 20)
    src = phone.write_backup(tmp_path / "src", day=0)
    with strip_conditional_writes(seaweed) as (endpoint, stripped):
        via = dict(env, PHONEVAULT_REPO=f"s3:{endpoint}/{seaweed.bucket}/{prefix}")

        refused(pv("init", env=via))
        assert stripped[0] >= 2, "the probe's conditional PUTs never went through the proxy"
        assert objects(seaweed, prefix) == {}  # not even the probe key is left

        pv("init", env=dict(env, PHONEVAULT_REPO=direct), check=True)
        pv("import", str(src), env=dict(env, PHONEVAULT_REPO=direct), check=True)
        before = objects(seaweed, prefix)
        refused(pv("import", str(src), env=via))
        refused(pv("backup", "--emulator", "--emulator-size", "1MB", env=via))
        assert objects(seaweed, prefix) == before  # no pack, no writer marker, no event

        snaps = json.loads(pv("snapshots", "--json", env=via, check=True).stdout)
        assert [s["device"] for s in snaps] == [phone.udid]
        top = json.loads(pv("ls", snaps[0]["id"][:8], "--json", env=via, check=True).stdout)
        assert "CameraRollDomain" in [x["name"] for x in top]
        check = json.loads(pv("check", "--read-data", "--json", env=via).stdout)
        assert check["ok"] and check["errors"] == []
