"""A vault on S3 through the real `phonevault` command, on a real SeaweedFS: a user's whole story (init, import,
backup of the emulator, browse, export bit for bit, check --read-data), the one-line errors, and several machines
writing into one bucket at once (separate caches, two devices, two writers of one device, a prune meanwhile)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import js
from tests.seaweed import Seaweed, free_ports, isolated_ports
from tests.sync.test_mobilesync import tree_digest

DEADLINE = 600  # seconds any one command may take here before it is a failure


@pytest.fixture
def s3_env(seaweed: Seaweed, cli_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment with its vault on its own prefix of the test bucket."""
    return dict(cli_env, **seaweed.env(), PHONEVAULT_REPO=seaweed.location())


def test_a_vault_on_s3_end_to_end(pv, s3_env, tmp_path) -> None:
    phone = SyntheticPhone(seed=51, size=3 << 20)
    src = phone.write_backup(tmp_path / "src", day=0)
    r = pv("init", env=s3_env, check=True)
    assert s3_env["PHONEVAULT_REPO"] in r.stdout
    pv("import", str(src), env=s3_env, check=True)
    r = pv("backup", "--emulator", "--emulator-size", "2MB", env=s3_env, check=True)
    devices = js(pv("devices", "--json", env=s3_env))
    assert len(devices) == 2
    snaps = js(pv("snapshots", "--json", env=s3_env))
    imported = next(s for s in snaps if s["device"] == phone.udid)
    top = js(pv("ls", imported["id"][:8], "--json", env=s3_env))
    assert "CameraRollDomain" in [x["name"] for x in top]
    pv("export", imported["id"][:8], "--to", str(tmp_path / "out"), env=s3_env, check=True)
    assert tree_digest(tmp_path / "out" / phone.udid) == tree_digest(src)
    backed_up = next(s for s in snaps if s["device"] != phone.udid)
    pv("export", backed_up["id"][:8], "--to", str(tmp_path / "out2"), env=s3_env, check=True)
    check = js(pv("check", "--read-data", "--json", env=s3_env))
    assert check["ok"] and check["errors"] == [] and check["snapshots"] == 2
    again = pv("init", env=s3_env)
    assert again.returncode == 1 and "already exists" in again.stderr


def _one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_the_first_contact_errors_are_one_line_each(pv, s3_env, seaweed: Seaweed) -> None:
    _one_line(
        pv("snapshots", env=dict(s3_env, PHONEVAULT_REPO=f"s3:{seaweed.endpoint}/missing-bucket/v")), 10, "bucket"
    )
    _one_line(pv("snapshots", env=s3_env), 10, "no phonevault repository")
    pv("init", env=s3_env, check=True)
    _one_line(pv("snapshots", env=dict(s3_env, AWS_SECRET_ACCESS_KEY="wrong")), 1, "access denied", "Signature")
    _one_line(pv("snapshots", env=dict(s3_env, AWS_ACCESS_KEY_ID="nobody")), 1, "access denied", "AccessKey")
    (port,) = free_ports(1)
    _one_line(pv("snapshots", env=dict(s3_env, PHONEVAULT_REPO=f"s3:http://127.0.0.1:{port}/b/v")), 1, "cannot reach")
    _one_line(pv("snapshots", env=dict(s3_env, PHONEVAULT_REPO="s3:bucket/v")), 1, "s3:http://HOST:PORT/BUCKET")


def test_each_command_appends_its_request_and_retry_counts_to_the_retry_log(pv, s3_env, tmp_path) -> None:
    """PHONEVAULT_RETRY_LOG through the real command (benchmarks/s3_writers.py sums these lines): one line per
    process that opened the vault, naming it, with the calls it made; none repeated on a healthy server."""
    log = tmp_path / "retries.jsonl"
    env = dict(s3_env, PHONEVAULT_RETRY_LOG=str(log))
    pv("init", env=env, check=True)
    pv("snapshots", env=env, check=True)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 2 and len({x["pid"] for x in lines}) == 2
    assert all(x["location"] == s3_env["PHONEVAULT_REPO"] and x["calls"] > 0 and x["retries"] == 0 for x in lines)


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("phonevault"))
    return subprocess.Popen([exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _progress_seen(p: subprocess.Popen, seen: list[str]) -> None:
    """Read p's stderr until its first progress line: it is staging data, not starting up."""
    for line in p.stderr:
        seen.append(line)
        if re.search(r": \d+ % \(", line):
            return
    raise AssertionError(f"no progress line before exit {p.wait()}: {''.join(seen)}")


def test_several_machines_write_into_one_bucket_at_once(pv, s3_env, tmp_path) -> None:
    """Five processes with five caches, standing in for five machines: two import different phones, two import the
    same phone (held so that both are staging before either commits: one commits, the other exits 11), and a
    prune --grace 0 runs while all four are writing. Afterwards check --read-data is clean, every committed
    snapshot exports bit for bit, and each machine's cache sees what the others wrote."""

    def machine(n: int) -> dict[str, str]:
        return dict(s3_env, PHONEVAULT_CACHE_DIR=str(tmp_path / f"cache-{n}"))

    pv("init", env=machine(0), check=True)
    # Something for the prune to reclaim: a forgotten snapshot of a fourth phone.
    old = SyntheticPhone(seed=60, size=2 << 20)
    old_src = old.write_backup(tmp_path / "old", day=0)
    pv("import", str(old_src), env=machine(0), check=True)
    old.write_backup(tmp_path / "old", day=1)
    pv("import", str(old_src), env=machine(0), check=True)
    first = js(pv("snapshots", "--json", env=machine(0)))[0]["id"]
    pv("forget", first[:8], env=machine(0), check=True)
    old_digest = tree_digest(old_src)

    phones = {n: SyntheticPhone(seed=60 + n, size=3 << 20) for n in (1, 2, 3)}
    sources = {
        1: phones[1].write_backup(tmp_path / "p1", day=0),
        2: phones[2].write_backup(tmp_path / "p2", day=0),
        3: phones[3].write_backup(tmp_path / "p3a", day=0),
        4: phones[3].write_backup(tmp_path / "p3b", day=1),  # the same phone, a day later, from another machine
    }
    digests = {n: tree_digest(src) for n, src in sources.items()}
    procs: dict[int, subprocess.Popen] = {}
    seen: dict[int, list[str]] = {n: [] for n in range(1, 6)}
    try:
        for n in (3, 4):  # the two writers of one device: 3 is held until 4 stages too
            procs[n] = _start(machine(n), "import", str(sources[n]))
            _progress_seen(procs[n], seen[n])
            if n == 3:
                procs[n].send_signal(signal.SIGSTOP)
        for n in (1, 2):
            procs[n] = _start(machine(n), "import", str(sources[n]))
            _progress_seen(procs[n], seen[n])
        procs[5] = _start(machine(5), "prune", "--grace", "0", "--json")
        procs[3].send_signal(signal.SIGCONT)
        outputs = {n: p.communicate(timeout=DEADLINE) for n, p in procs.items()}  # drains both pipes while waiting
        results = {n: (p.returncode, outputs[n][0], "".join(seen[n]) + outputs[n][1]) for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()

    codes = {n: code for n, (code, _, _) in results.items()}
    assert codes[1] == codes[2] == codes[5] == 0, results
    assert sorted([codes[3], codes[4]]) == [0, 11], results
    loser = 3 if codes[3] == 11 else 4
    assert "committed first" in results[loser][2] and "Traceback" not in results[loser][2]
    pruned = json.loads(results[5][1])
    assert pruned["deleted_packs"] >= 0  # what it may take depends on the moment; that nothing is lost is below

    check = js(pv("check", "--read-data", "--json", env=machine(6)))
    assert check["ok"] and check["errors"] == [], check
    winner = 4 if loser == 3 else 3
    expected = {phones[1].udid: digests[1], phones[2].udid: digests[2], phones[3].udid: digests[winner]}
    expected[old.udid] = old_digest
    for n in range(7):  # every machine's cache, stale or new, now sees all four devices and their latest
        snaps = js(pv("snapshots", "--json", env=machine(n)))
        assert {s["device"] for s in snaps} == set(expected), n
    snaps = js(pv("snapshots", "--json", env=machine(6)))
    assert len(snaps) == 4
    for s in snaps:
        out = tmp_path / "export" / s["id"]
        pv("export", s["id"][:8], "--to", str(out), env=machine(6), check=True)
        assert tree_digest(out / s["device"]) == expected[s["device"]], s["device"]


README = Path(__file__).resolve().parents[2] / "README.md"
WEED_LINE_END = "-ip.bind=127.0.0.1 > ~/seaweedfs/log"  # where the test gives weed's other listeners free ports


def readme_s3_block() -> str:
    """The shell block of README.md's "Vault on S3" section, as a reader copies it."""
    text = README.read_text()
    section = text[text.index("\n## Vault on S3\n") :]
    section = section[: section.index("\n## ", 1)]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


STOP_DEADLINE = 120  # seconds for SeaweedFS's graceful stop (~15 s) and the emulators' after the README's kill


def _group_gone(pgid: int, deadline: float) -> bool:
    """Whether every process of the group has exited within `deadline` seconds (polled: no event says so)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)  # between polls of the condition
    return False


def test_the_readme_s3_walkthrough_runs_as_written(tmp_path) -> None:
    """README's "Vault on S3" block, run by bash as a new user would paste it, in a fresh HOME with no phonevault,
    AWS or usbmuxd variables: SeaweedFS started with one command, a vault initialised on it, two emulated iPhones
    backed up at once by two processes with their own caches, the result browsed, the vault copied to a local
    folder under its own password and checked there with --read-data. Only what must differ on a shared machine is
    changed: the ports (8333, 27015, 27016 and, appended to the weed command, every other listener of weed's) and
    the path of .venv/bin. So the README cannot rot: a step that fails fails this test."""
    block = readme_s3_block()
    assert WEED_LINE_END in block and block.count("8333") >= 2, "the README's weed line changed: update this test"
    s3, flags = isolated_ports(tmp_path / "weed")
    emulator_ports = free_ports(2)
    script = block.replace(WEED_LINE_END, WEED_LINE_END.replace(" >", f" {' '.join(flags)} >"))
    script = script.replace("8333", str(s3)).replace("27015", str(emulator_ports[0]))
    script = script.replace("27016", str(emulator_ports[1])).replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    (tmp_path / "weed").mkdir()
    (tmp_path / "walk.sh").write_text("set -euo pipefail\n" + script + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHONEVAULT", "AWS_", "USBMUXD"))}
    env.update(HOME=str(tmp_path / "home"), COLUMNS="250")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        # Its own session: the script's background jobs (weed, the emulators) share its process group, all
        # killed below whatever happens; the README's last line only asks them to stop.
        p = subprocess.Popen(["bash", str(tmp_path / "walk.sh")], env=env, stdout=o, stderr=e, start_new_session=True)
        try:
            code = p.wait(DEADLINE)
            stopped = _group_gone(p.pid, STOP_DEADLINE)  # the README's `kill $(jobs -p)` reached every job
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    said = out.read_text()
    assert code == 0, (code, said, err.read_text()[-3000:])
    assert "created vault" in said and "created vault" in err.read_text()  # the vault on S3, then its copy
    for phone in ("Radia’s iPhone", "Margaret’s iPhone"):
        assert f"{phone}: snapshot" in said, said
    assert "CameraRollDomain/" in said and "2 snapshot(s) copied" in said
    assert "no errors: 2 device(s), 2 snapshot(s)" in said, said
    assert stopped, "SeaweedFS or an emulator outlived the README's last line"
