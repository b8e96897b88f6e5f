"""The real `phonevault` command, as a user runs it: the whole story, the error lines and exit codes, and faults
(SIGKILL mid-import, two imports at once, damaged objects)."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import js
from tests.sync.test_mobilesync import tree_digest


def one_error_line(r, code, *needles):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) >= 1
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.fixture(scope="module")
def phone():
    return SyntheticPhone(seed=21, size=8 << 20)


def test_the_whole_story(pv, phone, tmp_path):
    src = tmp_path / "Backup"
    dev = phone.write_backup(src, day=0)
    day0 = tree_digest(dev)
    pv("init", check=True)
    pv("import", str(src), check=True)
    phone.write_backup(src, day=1)
    day1 = tree_digest(dev)
    r = pv("import", str(dev), check=True)
    assert "unchanged since last import" in r.stdout

    devices = js(pv("devices", "--json"))
    assert len(devices) == 1
    d = devices[0]
    info = phone.device_info()
    assert d["device"] == phone.udid and d["name"] == info.name and d["snapshots"] == 2
    assert d["model"] == info.product_type and d["ios_version"] == info.ios_version and d["imei"] == info.imei
    assert d["encrypted_by_phone"] is False

    snaps = js(pv("snapshots", "--json"))
    assert [s["current"] for s in snaps] == [False, True]
    a, b = snaps[0]["id"], snaps[1]["id"]

    changes = js(pv("diff", a[:6], b[:6], "--json"))["changes"]
    added = [c for c in changes if c["change"] == "added" and "/DCIM/" in c["path"]]
    assert added

    top = js(pv("ls", b[:8], "--json"))
    assert "CameraRollDomain" in [x["name"] for x in top]
    dcim = js(pv("ls", f"{phone.udid}@latest", "CameraRollDomain/Media/DCIM/100APPLE", "--json"))
    photo = next(x for x in dcim if x["type"] == "file" and x["name"].endswith((".HEIC", ".JPG")))
    out = tmp_path / "photos"
    pv("extract", b[:8], photo["path"], "--to", str(out), check=True)
    assert (out / photo["path"]).read_bytes() == (dev / photo["file_id"][:2] / photo["file_id"]).read_bytes()
    again = pv("extract", b[:8], photo["path"], "--to", str(out))  # never over an existing file without --overwrite
    one_error_line(again, 1, "already exists", "--overwrite")

    pv("tag", a[:8], "before-trip", check=True)
    pv("rollback", phone.udid[:8], "--to", a[:8], check=True)
    snaps = js(pv("snapshots", "--json"))
    assert [s["current"] for s in snaps] == [True, False] and snaps[0]["tags"] == ["before-trip"]
    pv("pin", b[:8], check=True)
    plan = js(pv("forget", "--keep-last", "1", "--json"))
    assert plan[0]["forget"] == []  # a is current, b is pinned: nothing may go
    pv("pin", "--unpin", b[:8], check=True)
    plan = js(pv("forget", "--keep-last", "1", "--json"))
    assert plan[0]["forget"] == []  # b is the newest, a is current: both kept
    plan = js(pv("forget", b[:8], "--json"))
    assert plan[0]["forget"] == [b]
    assert [s["id"] for s in js(pv("snapshots", "--json"))] == [a]
    pv("prune", "--grace", "0", check=True)

    pv("export", a[:8], "--to", str(tmp_path / "exp"), check=True)
    assert tree_digest(tmp_path / "exp" / phone.udid) == day0
    rc = pv("check", "--read-data", "--json")
    report = js(rc)
    assert report["ok"] and report["errors"] == [] and report["blobs_read"] > 0
    stats = js(pv("stats", "--json"))
    assert stats["total"]["stored_bytes"] > 0 and stats["devices"][0]["snapshots"] == 1
    assert day1 != day0


def test_error_lines_and_exit_codes(pv, cli_env, phone, tmp_path):
    r = pv("snapshots")
    one_error_line(r, 10, "does not exist")
    pv("init", check=True)
    one_error_line(pv("init"), 1, "already exists")
    bad = dict(cli_env, PHONEVAULT_PASSWORD="wrong")
    one_error_line(pv("snapshots", env=bad), 12, "wrong password")
    one_error_line(pv("import", str(tmp_path / "nowhere")), 1, "does not exist")
    one_error_line(pv("ls", "zzzz"), 1, "not a snapshot id")
    one_error_line(pv("ls", "abcd"), 1, "no such snapshot")
    pwfile = tmp_path / "pw"
    pwfile.write_text(cli_env["PHONEVAULT_PASSWORD"] + "\n")
    env = {k: v for k, v in cli_env.items() if k != "PHONEVAULT_PASSWORD"}
    assert pv("snapshots", env=dict(env, PHONEVAULT_PASSWORD_FILE=str(pwfile))).returncode == 0
    one_error_line(pv("snapshots", env=env, stdin=subprocess.DEVNULL), 1, "no password")

    dev = phone.write_backup(tmp_path / "src", day=0)
    victim = max(dev.glob("??/*"), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(100)
    r = pv("import", str(dev))
    one_error_line(r, 3, victim.name, "truncated")
    assert len(js(pv("snapshots", "--json"))) == 1  # the snapshot is kept

    (dev / "Manifest.db").write_bytes(b"garbage" * 1000)
    one_error_line(pv("import", str(dev)), 1, "unreadable catalog")


def test_damaged_pack_index_and_event_are_named(pv, phone, cli_env, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    pv("import", str(dev), check=True)
    vault = Path(cli_env["PHONEVAULT_REPO"])
    packs = sorted((vault / "packs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack = packs[-1]
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    pack.write_bytes(bytes(raw))
    r = pv("check", "--read-data")
    one_error_line(r, 1, pack.name[:16])
    assert "error" in r.stderr

    index = next((vault / "index").iterdir())
    index.write_bytes(b"\x00" * 64)
    fresh = dict(cli_env, PHONEVAULT_CACHE_DIR=str(tmp_path / "cache2"))
    r = pv("snapshots", env=fresh)
    one_error_line(r, 1, index.name)

    event = next((vault / "events").rglob("0000000000"))
    event.write_bytes(b"\x01" * 80)
    r = pv("devices", env=dict(cli_env, PHONEVAULT_CACHE_DIR=str(tmp_path / "cache3")))
    one_error_line(r, 1, "events/")


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                out.append(int(pid))
        except OSError:
            continue
    return out


def _kill_import_at(pv_exe, env, folder, percent):
    """Start an import and SIGKILL it once it reports `percent` % of its bytes stored (its progress lines on a
    non-terminal stderr): the kill always lands inside the import, never in interpreter start-up or after it ended."""
    p = subprocess.Popen([pv_exe, "import", str(folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    for raw in p.stderr:
        line = raw.decode(errors="replace")
        seen.append(line)
        if (m := re.search(r": (\d+) % \(", line)) and int(m.group(1)) >= percent:
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL, (percent, p.returncode, "".join(seen))
    return seen[-1]


def test_sigkill_during_import_leaves_a_clean_vault(pv, cli_env, tmp_path):
    phone = SyntheticPhone(seed=33, size=48 << 20)
    dev = phone.write_backup(tmp_path / "src", day=0)
    pv("init", check=True)
    exe = str(Path(sys.executable).with_name("phonevault"))
    rng = random.Random(1)
    for percent in sorted(rng.sample(range(10, 100, 10), 4)):
        _kill_import_at(exe, cli_env, dev, percent)
        deadline = time.monotonic() + 10  # nothing the import started outlives it (the Manifest.db parser)
        while _processes_mentioning(str(dev)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_mentioning(str(dev)) == []
        r = js(pv("check", "--read-data", "--json"))
        assert r["ok"], r["errors"]  # leftovers are notes (harmless), never errors
        assert js(pv("snapshots", "--json")) == []  # no partial snapshot is ever visible
    pv("import", str(dev), check=True)
    last = js(pv("snapshots", "--json"))[-1]
    pv("export", last["id"][:8], "--to", str(tmp_path / "out"), check=True)
    assert tree_digest(tmp_path / "out" / phone.udid) == tree_digest(dev)
    pv("prune", "--grace", "0", check=True)
    assert js(pv("check", "--read-data", "--json"))["ok"]


def _wait_for_progress(p: subprocess.Popen) -> None:
    for line in p.stderr:
        if re.search(r": \d+ % \(", line):
            return
    raise AssertionError(f"no progress line before exit {p.wait()}")


def test_two_imports_of_one_device_at_once(pv, cli_env, tmp_path):
    """Both imports are staging before either commits (the first is stopped with SIGSTOP until the second has
    begun), so exactly one commits and the other exits 11, whatever the machine's speed."""
    phone = SyntheticPhone(seed=34, size=40 << 20)
    a = phone.write_backup(tmp_path / "a", day=0)
    b = phone.write_backup(tmp_path / "b", day=1)
    pv("init", check=True)
    exe = str(Path(sys.executable).with_name("phonevault"))
    procs = []
    for x in (a, b):
        p = subprocess.Popen(
            [exe, "import", str(x)], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait_for_progress(p)
        if not procs:
            p.send_signal(signal.SIGSTOP)
        procs.append(p)
    procs[0].send_signal(signal.SIGCONT)
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 11], results
    loser = next(err for code, err in results if code == 11)
    assert "committed first" in loser and "Traceback" not in loser
    assert len(js(pv("snapshots", "--json"))) == 1
    assert js(pv("check", "--json"))["ok"]


def test_env_defaults_to_user_data_dir(pv, cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "PHONEVAULT_REPO"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    r = pv("init", env=env, check=True)
    assert str(tmp_path / "xdg" / "phonevault" / "vault") in r.stdout
    assert os.path.isfile(tmp_path / "xdg" / "phonevault" / "vault" / "config")


def test_keys_add_and_change_password(pv, cli_env):
    pv("init", check=True)
    pv("key", "add", env=dict(cli_env, PHONEVAULT_NEW_PASSWORD="second"), check=True)
    keys = js(pv("key", "list", "--json"))
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    assert pv("snapshots", env=dict(cli_env, PHONEVAULT_PASSWORD="second")).returncode == 0
    pv("key", "passwd", env=dict(cli_env, PHONEVAULT_PASSWORD="second", PHONEVAULT_NEW_PASSWORD="third"), check=True)
    assert pv("snapshots", env=dict(cli_env, PHONEVAULT_PASSWORD="third")).returncode == 0
    one_error_line(pv("snapshots", env=dict(cli_env, PHONEVAULT_PASSWORD="second")), 12, "wrong password")
    assert pv("snapshots").returncode == 0  # the first password still opens it
