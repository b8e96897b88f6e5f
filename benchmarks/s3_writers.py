"""Several machines writing into one vault on SeaweedFS at once, counted: snapshots committed, conflicts, retries,
bytes lost. The figures of issue 14's closing note; the behaviour itself is asserted by
tests/store/test_s3_cli.py::test_several_machines_write_into_one_bucket_at_once.

    .venv/bin/python benchmarks/s3_writers.py [--rounds 4] [--size 8MB] [--out benchmarks/results/s3-writers.json]

Starts its own SeaweedFS on loopback (tests/seaweed.py) and one vault on it. Each round, through the real
`phonevault` command, every process with its own cache (its own machine) and PHONEVAULT_RETRY_LOG set:
- four emulated iPhones over MobileBackup2 (`phonevault emulator serve --day ROUND`, each on its own usbmuxd port):
  phones A and B, and two emulators of one phone C (the same seed, so the same UDID: one phone's backups taken by two
  machines at once);
- five processes started together: `backup` of A, `backup` of B, two `backup`s of C (one through each of its
  emulators: started together, both read the same head, the first to commit wins and the other exits 11), and
  `prune --grace 0`;
- from the third round on, A's snapshot of two rounds before is forgotten first, so that the prune has data to
  delete while the backups write.
After the last round, on a machine whose cache has never seen the vault: `check --read-data`, then every snapshot
that was committed and not forgotten is exported and compared file by file, by content, to its source, the synthetic
phone of that seed and day written by `SyntheticPhone.write_backup` (the backup oracle of tests/sync: its Info.plist
aside, which the backing-up computer writes, with its own GUID, not the phone). Bytes lost: the bytes of source
files whose exported copy is missing or differs (must be 0). Retries: the requests the retrying wrapper repeated, from
the one line each process appends to PHONEVAULT_RETRY_LOG when it closes the vault (store/backends/retrying.py).

Results: a JSON file (per round: every process's role, exit code and snapshot) and a short table on stdout. Exit
status 1 if anything was lost, check found errors, a process failed otherwise than with exit 11, or both backups
of one phone committed on the same parent. (Both may commit, one on the other: when one starts after the other
committed, as an incremental backup of a small phone can; the table counts such rounds apart.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phonevault.cli.sizes import parse_size  # noqa: E402
from phonevault.sync.emulator.phone import SyntheticPhone  # noqa: E402
from tests.seaweed import free_ports, start_seaweedfs  # noqa: E402

PV = str(Path(sys.executable).with_name("phonevault"))
DEADLINE = 600.0  # seconds any one process may take before the run is a failure
SEEDS = {"A": 11, "B": 12, "C": 13}
NOT_FROM_THE_PHONE = {"Info.plist"}  # written by the computer that backs up (pmd3's factory info, a random GUID)


@dataclass(frozen=True)
class Emulator:
    name: str  # A, B, C1, C2
    seed: int
    proc: subprocess.Popen
    address: str


def start_emulators(work: Path, seeds: dict[str, int], day: int, size: str, env: dict[str, str]) -> dict[str, Emulator]:
    """One `emulator serve` per name, started together (each generates its phone first), returned once each listens."""
    started = {}
    for name, seed in seeds.items():
        (port,) = free_ports(1)
        out = work / f"emulator-{name}.out"
        with open(out, "w") as f:
            proc = subprocess.Popen(
                [PV, "emulator", "serve", "--data", str(work / f"em-{name}"), "--seed", str(seed), "--day", str(day),
                 "--size", size, "--port", str(port)],
                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started[name] = (Emulator(name, seed, proc, f"127.0.0.1:{port}"), out)
    end = time.monotonic() + DEADLINE
    try:
        for name, (emulator, out) in started.items():
            while "USBMUXD_SOCKET_ADDRESS=" not in out.read_text():  # printed once it listens
                if emulator.proc.poll() is not None or time.monotonic() > end:
                    raise SystemExit(f"emulator {name} did not start:\n{out.read_text()[-2000:]}")
                time.sleep(0.1)  # between polls of the condition above
    except BaseException:
        for emulator, _ in started.values():
            stop(emulator.proc)
        raise
    return {name: emulator for name, (emulator, _) in started.items()}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # the emulator stops cleanly on KeyboardInterrupt
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([PV, *args], env=env, capture_output=True, text=True, timeout=DEADLINE)
    if r.returncode != 0:
        raise SystemExit(f"phonevault {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def content_digest(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, size) of every file under root, but those the phone does not send."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and str(p.relative_to(root)) not in NOT_FROM_THE_PHONE
    }


def one_round(work: Path, rnd: int, size: str, machine, forget: str | None) -> dict:
    base = machine(0)
    if forget:
        pv(base, "forget", forget)
    seeds = {"A": SEEDS["A"], "B": SEEDS["B"], "C1": SEEDS["C"], "C2": SEEDS["C"]}
    emulators = start_emulators(work, seeds, rnd, size, base)
    try:
        roles = {  # role -> (machine number, argv)
            "backup A": (1, ["backup"], "A"),
            "backup B": (2, ["backup"], "B"),
            "backup C via 1": (3, ["backup"], "C1"),
            "backup C via 2": (4, ["backup"], "C2"),
            "prune --grace 0": (5, ["prune", "--grace", "0", "--json"], None),
        }
        procs = {}
        start = time.perf_counter()
        for role, (n, argv, em) in roles.items():
            env = machine(n)
            if em:
                env["USBMUXD_SOCKET_ADDRESS"] = emulators[em].address
            procs[role] = subprocess.Popen(
                [PV, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        outs = {role: p.communicate(timeout=DEADLINE) for role, p in procs.items()}
        wall = time.perf_counter() - start
    finally:
        for e in emulators.values():
            stop(e.proc)
    rows = []
    for role, p in procs.items():
        out, err = outs[role]
        snap = re.search(r"snapshot ([0-9a-f]{8})", out)
        device = roles[role][2]
        rows.append({
            "role": role, "pid": p.pid, "exit": p.returncode,
            "seed": emulators[device].seed if device else None, "day": rnd,
            "snapshot": snap.group(1) if snap and device else None,  # committed, whatever it warned of after
            "conflict": p.returncode == 11 and "committed first" in err,
            "stderr": err.strip().splitlines()[-3:] if p.returncode else [],
        })  # fmt: skip
    return {"round": rnd, "wall": round(wall, 2), "processes": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--size", default="8MB", help="size of each emulated phone")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "s3-writers.json")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp dir, removed at the end)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3-writers-", dir=args.workdir))
    t0 = time.perf_counter()
    server = start_seaweedfs(work / "seaweedfs")
    retry_log = work / "retries.jsonl"
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PHONEVAULT", "AWS_", "USBMUXD"))}
        env.update(server.env(), PHONEVAULT_REPO=server.location("writers"), PHONEVAULT_PASSWORD="writers",
                   PHONEVAULT_RETRY_LOG=str(retry_log), HOME=str(work / "home"), COLUMNS="250")  # fmt: skip

        def machine(n: int) -> dict[str, str]:
            return dict(env, PHONEVAULT_CACHE_DIR=str(work / f"cache-{n}"))

        pv(machine(0), "init")
        rounds = []
        for rnd in range(args.rounds):
            # A's snapshot of two rounds ago: the last one of a device cannot be forgotten.
            previous_a = (
                next(p["snapshot"] for p in rounds[-2]["processes"] if p["role"] == "backup A") if rnd >= 2 else None
            )
            rounds.append(one_round(work, rnd, args.size, machine, previous_a))
            print(
                f"round {rnd}: " + ", ".join(f"{r['role']} -> {r['exit']}" for r in rounds[-1]["processes"]), flush=True
            )
            rounds[-1]["forgotten_before"] = previous_a
        fresh = machine(6)  # a machine that never saw the vault
        check = json.loads(pv(fresh, "check", "--read-data", "--json").stdout)
        forgotten = {r["forgotten_before"] for r in rounds if r["forgotten_before"]}
        committed = [p for r in rounds for p in r["processes"] if p["snapshot"]]
        lost = compared = 0
        oracle: dict[tuple[int, int], dict[str, tuple[str, int]]] = {}
        size = parse_size(args.size)
        for p in committed:
            if p["snapshot"] in forgotten:
                continue
            key = (p["seed"], p["day"])
            if key not in oracle:
                src = SyntheticPhone(seed=p["seed"], size=size).write_backup(
                    work / f"src-{key[0]}-{key[1]}", day=key[1]
                )
                oracle[key] = content_digest(src)
                shutil.rmtree(src)
            out = work / "export" / p["snapshot"]
            pv(fresh, "export", p["snapshot"], "--to", str(out))
            (exported,) = list(out.iterdir())  # one folder, named by the device's UDID
            got = content_digest(exported)
            lost += sum(n for path, (digest, n) in oracle[key].items() if got.get(path, ("", 0))[0] != digest)
            compared += sum(n for _, n in oracle[key].values())
            shutil.rmtree(out)
        retried = [json.loads(line) for line in retry_log.read_text().splitlines()] if retry_log.exists() else []
        pairs = [sorted(p["exit"] for p in r["processes"] if p["role"].startswith("backup C")) for r in rounds]
        processes = sum(len(r["processes"]) for r in rounds)
        # Where both same-device backups committed, the later one must have read the earlier as its head (it
        # started after that commit): one's parent is the other. Two commits on one parent would be a fork.
        parents = {s["id"][:8]: (s["parent"] or "")[:8] for s in json.loads(pv(fresh, "snapshots", "--json").stdout)}
        serial = forks = 0
        for r in rounds:
            both = [p["snapshot"] for p in r["processes"] if p["role"].startswith("backup C") and p["snapshot"]]
            if len(both) == 2:
                serial += parents.get(both[0]) == both[1] or parents.get(both[1]) == both[0]
                forks += not (parents.get(both[0]) == both[1] or parents.get(both[1]) == both[0])
        summary = {
            "rounds": args.rounds,
            "processes": processes,
            "snapshots_committed": len(committed),
            "snapshots_forgotten_by_the_run": len(forgotten),
            "snapshots_compared": len(committed) - len(forgotten & {p["snapshot"] for p in committed}),
            "conflicts_exit_11": sum(p["conflict"] for r in rounds for p in r["processes"]),
            "same_device_pairs_one_commit_one_conflict": sum(pair == [0, 11] for pair in pairs),
            "same_device_pairs_both_committed_one_on_the_other": serial,
            "same_device_pairs_both_committed_on_one_parent": forks,
            "other_failures": sum(p["exit"] not in (0, 11) for r in rounds for p in r["processes"]),
            "requests": sum(x["calls"] for x in retried),  # backend calls through the retrying wrapper
            "retries": sum(x["retries"] for x in retried),
            "vault_handles_counted": len(retried),  # every phonevault run here, check and exports too
            "bytes_compared": compared,
            "bytes_lost": lost,
            "check_errors": len(check["errors"]),
            "check_ok": check["ok"],
            "snapshots_in_vault": check.get("snapshots"),
        }
        result = {
            "summary": summary,
            "size": args.size,
            "seeds": SEEDS,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "rounds": rounds,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),  # fmt: skip
            "load": os.getloadavg(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        width = max(map(len, summary))
        for k, v in summary.items():
            print(f"{k:<{width}}  {v}")
        print(f"({result['wall_seconds']} s; {args.out})")
        ok = lost == 0 and summary["check_errors"] == 0 and forks == 0
        ok = ok and summary["other_failures"] == 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
