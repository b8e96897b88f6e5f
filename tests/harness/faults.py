"""Fault trials: every command through the library on a backend that fails the way disks fail, and one real full
disk.

In-process (`run_fault`): the command runs on `FaultyBackend(LocalBackend(vault))` with one declared fault
(store/backends/faulty.py): the Nth call of a method failing with EIO (before it happens, or for a write after it
is durable: `eio-after`), the Nth read returning too few bytes (`short`) or a flipped bit (`flip`), or the disk
filling after N bytes (`full`). N is drawn by the plan from a census of the same command without faults. Log
trials aim at the event log itself: the Nth read of an events/ segment, with a cold cache (a second machine, or
a rebuilt cache), so every segment is read whole. Then:
1. the command either succeeds or raises a typed error (PhonevaultError or OSError: one line and an exit code in
   the CLI); any other exception is a traceback there, and a problem here; and the error is about the vault
   (DeviceDisconnected for a fault of the vault would send the user to the cable, not the disk);
2. if it succeeds, what it returned is right: an export equals the snapshot's digest, a listing, diff, extract or
   stats equals the fault-free census's; `check --read-data` that was handed a corrupted pack read and says ok
   has missed it;
3. the verdict (verdict.py) holds once the fault is gone, and the same command through the CLI succeeds.

The full disk (`run_disk_full`) is real: a 16 MiB tmpfs in a private mount namespace (`unshare -m` as root, else
`unshare -rm`), holding vault and cache. Phone C (4 MiB) is imported; importing BIG (16 MiB) and backing up B must
fail with one line each, leaving no temporary file; C still checks and exports bit-exact; the tmpfs is then grown
to 256 MiB (a phone wants its upload plus 128 MiB free before it backs up at all) and both commands run again
and succeed, and everything checks and exports.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from phonevault.store import keys as keyring
from phonevault.store.backends.faulty import DiskFull, Fail, FlipBit, ShortRead
from phonevault.store.check import check
from phonevault.store.errors import PhonevaultError
from phonevault.store.history import apply_forget, plan_forget, rollback, tag
from phonevault.store.prune import prune
from phonevault.store.refs import resolve_snapshot
from phonevault.store.repository import Repository
from phonevault.store.retention import Policy
from phonevault.store.stats import usage
from phonevault.sync.errors import DeviceDisconnected

from . import crash
from .crash import close_quietly, faulty, open_faulty
from .records import Trial, TrialResult, TrialSpec
from .vaults import NEW_PASSWORD, PASSWORD, PV, Run, Vault, differences, folder_digest, pv, record
from .verdict import opening_password, verdict
from .world import BACKUP_CONSTRUCTED, Rig, World

try:
    import lmdb

    TYPED = (PhonevaultError, OSError, lmdb.Error)  # the CLI turns each into one line and an exit code
except ImportError:  # pragma: no cover
    TYPED = (PhonevaultError, OSError)


@dataclass(frozen=True, slots=True)
class FaultOp:
    name: str
    baseline: str
    writes: bool  # a command that changes the vault (write faults and a full disk apply)


FAULT_OPS = {
    op.name: op
    for op in (
        FaultOp("import", "base", True),
        FaultOp("backup", "base", True),
        FaultOp("export", "base", True),  # it appends an audit event
        FaultOp("check", "base", False),
        FaultOp("prune", "forgotten", True),
        FaultOp("forget", "three", True),
        FaultOp("rollback", "three", True),
        FaultOp("tag", "base", True),
        FaultOp("key-add", "base", True),
        FaultOp("key-passwd", "base", True),
        FaultOp("ls", "base", False),
        FaultOp("extract", "base", False),
        FaultOp("diff", "base", False),
        FaultOp("stats", "base", False),
        FaultOp("restore", "base", True),  # it appends an audit event; the device is the emulator's third B
    )
}


def _snap(repo: Repository, world: World, label: str):
    """(view, snapshot) as the CLI resolves an id: a snapshot the log does not show (a segment it could not read)
    is SnapshotNotFound, not None."""
    return resolve_snapshot(repo, world.by_label(label).id)


RESTORE_TARGET = 2  # the emulator instance restores write to, so no backup trial ever reads a restored phone


def extract_target(world: World) -> tuple[str, str]:
    """A photo of A's day-1 snapshot to extract: its domain path and its fileID (its bytes are in the folder)."""
    from phonevault.sync.manifest import read_manifest_db

    rows = read_manifest_db(world.folders["A-d1"] / "Manifest.db")
    files = sorted((r for r in rows if r.flags == 1 and r.size > 0), key=lambda r: (-r.size, r.file_id))
    return f"{files[0].domain}/{files[0].relative_path}", files[0].file_id


def library_command(name: str, repo: Repository, world: World, rig: Rig, scratch: Path) -> object:
    """Run one command through the library; what it returns, in a form two runs can be compared by."""
    match name:
        case "import":
            from phonevault.sync.mobilesync import import_folder

            import_folder(repo, world.folders["A-d2"])
            return None
        case "backup":
            from phonevault.sync.backup2 import backup_device

            backup_device(repo, usbmux_address=rig.address("B", 1))
            return None
        case "export":
            from phonevault.sync.export import export_snapshot

            view, snap = _snap(repo, world, "A day 1")
            dest = scratch / "export"
            shutil.rmtree(dest, ignore_errors=True)
            result = export_snapshot(repo, view, snap, dest)
            return folder_digest(result.path), [*result.problems, *getattr(result, "damaged", [])]
        case "check":
            report = check(repo, read_data=True)
            return {"ok": report.ok, "errors": report.errors[:3]}
        case "prune":
            prune(repo, grace_us=0)
            return None
        case "forget":
            for view in repo.devices():
                apply_forget(repo, plan_forget(view, Policy(last=1)), "harness")
            return None
        case "rollback":
            view, snap = _snap(repo, world, "A day 0")
            rollback(repo, view, snap)
            return None
        case "tag":
            view, snap = _snap(repo, world, "A day 0")
            tag(repo, view, snap, ["harness"])
            return None
        case "key-add":
            keyring.add_key(repo.backend, repo.key, NEW_PASSWORD)
            return None
        case "key-passwd":
            keyring.change_password(repo.backend, repo.key, repo.key_id, NEW_PASSWORD)
            return None
        case "ls":
            from phonevault.sync.catalog import list_dir, load_catalog

            _view, snap = _snap(repo, world, "A day 1")
            return repr(list_dir(load_catalog(repo, snap), ""))
        case "extract":
            from phonevault.sync.extract import extract

            _view, snap = _snap(repo, world, "A day 1")
            path, file_id = extract_target(world)
            dest = scratch / "extract"
            shutil.rmtree(dest, ignore_errors=True)
            extract(repo, snap, [path], dest)
            want = (world.folders["A-d1"] / file_id[:2] / file_id).read_bytes()
            return (dest / path).read_bytes() == want
        case "diff":
            from phonevault.sync.diff import diff

            _va, a = _snap(repo, world, "A day 0")
            _vb, b = _snap(repo, world, "A day 1")
            return repr(diff(repo, a, b))
        case "stats":
            per_device, total, _on_disk = usage(repo)
            return repr((per_device, total))
        case "restore":
            from phonevault.sync.restore import restore_device

            view, snap = _snap(repo, world, "B day 0 (backup)")
            emu = rig.emulator("B", 1, instance=RESTORE_TARGET)
            r = restore_device(repo, view, snap, usbmux_address=emu.address, reboot=False)
            if r.damaged:  # exit 3 in the CLI: named files were not restored
                return ("partial", len(r.damaged))
            got = {p: d for p, d in folder_digest(emu.device_dir).items() if "/" in p}
            want = {p: d for p, d in world.device_content("B", 0).items() if "/" in p}
            return differences(got, want, content_only=True)
    raise ValueError(name)


def cli_args(name: str, world: World) -> list[str]:
    a0, a1 = world.by_label("A day 0").id, world.by_label("A day 1").id
    return {
        "import": ["import", str(world.folders["A-d2"])],
        "backup": ["backup"],
        "export": ["export", a1, "--to", "{scratch}/cli-export"],
        "check": ["check", "--read-data"],
        "prune": ["prune", "--grace", "0"],
        "forget": ["forget", "--keep-last", "1"],
        "rollback": ["rollback", world.phones["A"].udid, "--to", a0],
        "tag": ["tag", a0, "harness"],
        "key-add": ["key", "add"],
        "key-passwd": ["key", "passwd"],
        "ls": ["ls", a1],
        "extract": ["extract", a1, extract_target(world)[0], "--to", "{scratch}/cli-extract"],
        "diff": ["diff", a0, a1],
        "stats": ["stats"],
        "restore": ["restore", world.by_label("B day 0 (backup)").id, "--yes", "--no-reboot"],
    }[name]


def census(name: str, world: World, rig: Rig, where: Path) -> dict:
    """Calls per method, bytes written, and the command's fault-free result."""
    op = FAULT_OPS[name]
    vault = world.baselines[op.baseline].clone(where)
    size = _bytes_under(vault.repo)
    repo, backend = open_faulty(vault)
    try:
        result = library_command(name, repo, world, rig, vault.tmp)
    finally:
        close_quietly(repo)
    # What the command wrote, for DiskFull's capacity (the wrapper counts writes only when it enforces a limit).
    return {"calls": dict(backend.calls), "written": max(0, _bytes_under(vault.repo) - size), "result": result}


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def make_rule(params: dict):
    kind, method, nth, prefix = params["kind"], params.get("method"), params.get("nth"), params.get("prefix", "")
    if kind in ("eio", "eio-w"):
        return Fail(method, nth, errno.EIO, prefix=prefix)
    if kind == "eio-after":
        return Fail(method, nth, errno.EIO, after=True, prefix=prefix)
    if kind == "short":
        return ShortRead(method, nth, drop=params["drop"], prefix=prefix)
    if kind == "flip":
        return FlipBit(method, nth, bit=params["bit"], prefix=prefix)
    if kind == "full":
        return DiskFull(params["capacity"])
    raise ValueError(kind)


def run_fault(spec: TrialSpec, world: World, rig: Rig, where: Path) -> TrialResult:
    trial = Trial(spec)
    op = FAULT_OPS[spec.operation]
    reference = world.census[f"fault:{op.name}"]["result"]
    vault = world.baselines[op.baseline].clone(where, cache=not spec.params.get("cold", False))
    rule = make_rule(spec.params)
    repo = None
    outcome: object = None
    failed: BaseException | None = None
    backend = faulty(vault, [rule])
    try:
        repo = Repository.open(backend, PASSWORD, cache_root=vault.cache)
        outcome = library_command(op.name, repo, world, rig, vault.tmp)
    except TYPED as e:
        failed = e
        trial.note(f"failed cleanly: {type(e).__name__}: {str(e)[:200]}")
        if isinstance(e, DeviceDisconnected):  # every fault here is the vault's; the phone never went away
            trial.problem(f"a fault of the vault ({rule}) is reported as the device disconnecting: {e}")
    except Exception as e:  # noqa: BLE001 - any other type is a traceback in the CLI
        failed = e
        trial.problem(f"{op.name} under {rule} raised {type(e).__name__} (untyped: a traceback in the CLI): {e}")
    finally:
        if repo is not None:
            close_quietly(repo)
    fired = backend.fired
    trial.faults_injected += len(fired)
    trial.landed = "; ".join(f"{type(r).__name__} {m} {n.split('/', 1)[0]}" for r, m, n in fired[:2])
    if not fired:
        trial.note("the fault never fired (the command made fewer such calls than its census)")
    if failed is None and fired:
        _same_result(trial, op, rule, outcome, reference, world, fired)
    password = PASSWORD
    if op.name == "key-passwd":
        password = opening_password(trial, vault, (PASSWORD, NEW_PASSWORD))
        if password is None:
            return trial.result()
    survivors = crash.survivors(crash.OPS[op.name], world) if op.name == "forget" else world.digests(op.baseline)
    verdict(trial, vault, survivors, "after the fault", password=password)
    args = [a.replace("{scratch}", str(vault.tmp)) for a in cli_args(op.name, world)]
    env = {"PHONEVAULT_NEW_PASSWORD": NEW_PASSWORD}
    if op.name == "backup":
        env["USBMUXD_SOCKET_ADDRESS"] = rig.address("B", 1)
    if op.name == "restore":
        env["USBMUXD_SOCKET_ADDRESS"] = rig.address("B", 1, RESTORE_TARGET)
    rerun = pv(trial, vault, *args, password=password, **env)
    if rerun.code != 0:
        trial.problem(f"`{' '.join(rerun.args)}` without the fault fails: exit {rerun.code}: {rerun.lines()[-2:]}")
    return trial.result()


def unnamed_paths(missing, named: list[str]) -> list[str]:
    """The missing backup paths no line names: by their fileID (`… (bf/bf39…): not exported`), or by a glob such
    as `fc/**` (a whole unreadable shard)."""
    text = "\n".join(named)
    globs = [g.strip("():,") for g in re.findall(r"\S*\*\S*", text)]
    return sorted(
        p for p in missing if p.rsplit("/", 1)[-1] not in text and not any(fnmatch.fnmatch(p, g) for g in globs)
    )


def _same_result(trial: Trial, op: FaultOp, rule, outcome, reference, world: World, fired) -> None:
    corrupting = [(r, m, n) for r, m, n in fired if isinstance(r, ShortRead | FlipBit)]
    if op.name == "export":
        digest, named = outcome
        want = world.by_label("A day 1").files
        if named:  # a partial export (exit 3 in the CLI): what it wrote is exact, what it left out is named
            wrong = [p for p, d in digest.items() if want.get(p) != d]
            unnamed = unnamed_paths(want.keys() - digest.keys(), named)
            if wrong or unnamed:
                trial.problem(f"a partial export under {rule} wrote {wrong[:2]} wrong, left {unnamed[:2]} unnamed")
            else:
                trial.note(f"partial export under {rule}: {named[:1]}")
        elif diff := differences(digest, want):
            trial.problem(f"export succeeded under {rule} but wrote different files: {diff}")
            trial.bytes_lost += world.by_label("A day 1").size
    elif op.name == "check":
        missed = [n for _r, m, n in corrupting if n.startswith("packs/") and m == "get"]
        if missed and outcome["ok"]:
            trial.problem(f"check --read-data was handed a corrupted read of {missed[0]} ({rule}) and says ok")
        trial.damaged_made += bool(missed)
        trial.damaged_detected += bool(missed) and not outcome["ok"]
    elif op.name == "restore" and isinstance(outcome, list) and outcome:
        trial.problem(f"restore succeeded under {rule} but the phone now differs from the snapshot: {outcome}")
    elif op.name == "restore":
        pass  # restored exactly, or a partial restore that named what it left out
    elif reference is not None and outcome != reference:
        trial.problem(f"{op.name} succeeded under {rule} but returned something else than without it")


# --- a real full disk -----------------------------------------------------------------------------------------------

DISK_FULL = r"""
set -u
mount -t tmpfs -o size=16m tmpfs "$DISK"
export PHONEVAULT_REPO="$DISK/vault" PHONEVAULT_CACHE_DIR="$DISK/cache"
run() { name=$1; shift; "$PV" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; echo $? >"$OUT/$name.rc"; }
run 01-init init
run 02-import-small import "$SMALL"
run 03-import-big import "$BIG"
run 04-backup backup
find "$DISK" -name '.tmp-*' >"$OUT/leftovers"
run 05-check check --read-data --json
run 06-export-small export "$SMALL_ID" --to "$OUT/export-small"
mount -o remount,size=256m "$DISK"  # a phone wants its upload + 128 MiB free before it backs up
run 07-import-big-again import "$BIG"
run 08-backup-again backup
run 09-check check --read-data --json
run 10-snapshots snapshots --json
for id in $(sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p' "$OUT/10-snapshots.out"); do
  run "11-export-$id" export "$id" --to "$OUT/export-$id"
done
"""


def _namespace() -> list[str] | None:
    if shutil.which("unshare") is None:
        return None
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


def run_disk_full(spec: TrialSpec, world: World, rig: Rig, where: Path) -> TrialResult:
    trial = Trial(spec)
    ns = _namespace()
    if ns is None:
        trial.problem("util-linux's unshare is needed for the disk-full trial")
        return trial.result()
    out, disk = where / "out", where / "disk"
    out.mkdir(parents=True)
    disk.mkdir()
    vault = Vault(where)  # only for its environment (HOME, TMPDIR, password)
    env = vault.env(
        DISK=str(disk), OUT=str(out), SMALL=str(world.folders["C-d0"]), BIG=str(world.folders["BIG-d0"]), PV=PV,
        SMALL_ID="latest", USBMUXD_SOCKET_ADDRESS=rig.address("B", 0),
    )  # fmt: skip
    p = subprocess.run([*ns, "bash", "-c", DISK_FULL], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        trial.problem(f"the disk-full script failed to run (exit {p.returncode}): {p.stderr[-400:]}")
        return trial.result()
    runs = {}
    for rc in sorted(out.glob("*.rc")):
        name = rc.stem
        r = Run((name,), int(rc.read_text()), (out / f"{name}.out").read_text(), (out / f"{name}.err").read_text())
        record(trial, (name,), r.code, r.stdout, r.stderr, 0.0)
        runs[name] = r
    for ok in ("01-init", "02-import-small", "05-check", "06-export-small", "07-import-big-again", "08-backup-again"):
        if runs[ok].code != 0:
            trial.problem(f"{ok}: exit {runs[ok].code}: {runs[ok].lines()[-2:]}")
    for full in ("03-import-big", "04-backup"):
        r = runs[full]
        trial.faults_injected += 1
        if r.code == 0:
            trial.problem(f"{full} succeeded on a full 16 MiB disk")
        else:
            lines = r.lines()
            if len(lines) != 1 or not re.search("space|free", lines[0]):
                trial.problem(f"{full} on a full disk: exit {r.code}, not one line naming the full disk: {lines}")
            trial.landed = "ENOSPC, and the device's own refusal"
    if (leftovers := (out / "leftovers").read_text().strip()) != "":
        trial.problem(f"temporary files left on the full disk: {leftovers.splitlines()[:3]}")
    for name in ("05-check", "09-check"):
        doc = json.loads(runs[name].stdout or "{}")
        if not doc.get("ok"):
            trial.problem(f"{name}: check --read-data is not ok: {doc.get('errors', [])[:3]}")
    small = world.folder_digests["C-d0"]
    got = [p for p in (out / "export-small").iterdir()] if (out / "export-small").exists() else []
    if len(got) != 1 or differences(folder_digest(got[0]), small):
        trial.problem("phone C, imported before the disk filled, no longer exports bit-exact")
        trial.bytes_lost += sum(d[1] for d in small.values())
    expected = {
        world.phones["C"].udid: (small, False),
        world.phones["BIG"].udid: (world.folder_digests["BIG-d0"], False),
        world.phones["B"].udid: (world.device_content("B", 0), True),
    }
    snaps = json.loads(runs["10-snapshots"].stdout or "[]")
    if sorted(s["device"] for s in snaps) != sorted(expected):
        trial.problem(f"after the disk was grown the vault holds {[s['device'][:8] for s in snaps]}, not C, BIG, B")
    for s in snaps:
        want, backup = expected.get(s["device"], ({}, False))
        got = list((out / f"export-{s['id']}").glob("*"))
        digest = folder_digest(got[0]) if runs.get(f"11-export-{s['id']}", Run((), 1, "", "")).code == 0 else None
        if digest is not None and backup:
            digest = {p: d for p, d in digest.items() if p not in BACKUP_CONSTRUCTED}
        if digest is None or differences(digest, want, content_only=backup):
            trial.problem(f"after the disk was grown, snapshot {s['id'][:8]} does not export bit-exact")
    return trial.result()
