"""Crash trials: an operation killed (SIGKILL) at a chosen moment inside it, or stopped at a chosen backend write.

Operations (`OPS`), each started from its baseline (world.py): import (A day 2 into `base`), backup (B day 1,
incremental, into `base`), backup-first (B day 0, a full first backup, into `a-only`), forget (`--keep-last 1` on
`three`), prune-grace0 (`prune --grace 0` on `forgotten`), prune (`prune --grace 1h` on `aged`, whose marker is
past that grace: the sweep of a due marker), rollback (A back to day 0 on `three`), key-add and key-passwd (on
`base`).

Kill points, drawn by the plan from a census of one uninterrupted run of the same operation on the same baseline:
- `event N`: the Nth file-system event under the vault, its cache or the import's source (probe.py) — reads and
  writes alike, so points spread over the whole operation, start-up excluded;
- `link N`: the Nth `os.link` — a vault object written and fsynced but not yet linked ("between fsync and link");
- `bytes B`: once the store has been handed B bytes of file content (mid-chunking, import and backup);
- `timed T` (--full only): T seconds after the operation's first progress marker, the only kill whose moment
  depends on the machine's speed (recorded, so a failure names it).
Then the verdict (verdict.py) on the survivors, the operation run again (it must succeed), and what the operation
promises afterwards (`_after`).

Stops (category "stop"): the same operations in-process through the library, on `FaultyBackend(LocalBackend)`,
halted at their k-th write call (put, put_exclusive, delete) for every k in turn: `Fail(method, nth, EIO)` before
the call reaches the disk ("before"), or after it is durable (`after=True`: the caller never heard back), and from
then on every call fails, as if the disk had gone — so cleanup code cannot tidy up what a real crash would leave.
Stopping before a `packs/` write's successor `index/` write is the "mid-index" case; before a put_exclusive of
`events/` is the commit point.
"""

from __future__ import annotations

import errno
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from phonevault.store import keys as keyring
from phonevault.store.backends.faulty import Fail, FaultyBackend
from phonevault.store.backends.local import LocalBackend
from phonevault.store.errors import PhonevaultError
from phonevault.store.history import apply_forget, plan_forget, rollback
from phonevault.store.prune import prune
from phonevault.store.refs import resolve_snapshot
from phonevault.store.repository import Repository
from phonevault.store.retention import Policy

from .child import Child, Stop, place_of
from .records import Trial, TrialResult, TrialSpec
from .vaults import NEW_PASSWORD, PASSWORD, Digest, Vault, differences, pv
from .verdict import library_exports, live, opening_password, verdict
from .world import BACKUP_CONSTRUCTED, HarnessError, Rig, SnapDigest, World

WRITES = ("put", "put_exclusive", "delete")


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    baseline: str
    emulator: tuple[str, int] | None = None  # (phone, day) the backup talks to
    source: str | None = None  # the folder an import reads (watched by the probe)
    marker: str | None = None  # the first progress line of a long operation (timed kills wait for it)
    new_password: bool = False


OPS = {
    op.name: op
    for op in (
        Operation("import", "base", source="A-d2", marker=r"^importing \S+: \d+ % \("),
        Operation("backup", "base", emulator=("B", 1), marker=r"^backing up "),
        Operation("backup-first", "a-only", emulator=("B", 0), marker=r"^backing up "),
        Operation("forget", "three"),
        Operation("prune-grace0", "forgotten"),
        Operation("prune", "aged"),
        Operation("rollback", "three"),
        Operation("key-add", "base", new_password=True),
        Operation("key-passwd", "base", new_password=True),
    )
}


def cli_args(op: Operation, world: World) -> list[str]:
    match op.name:
        case "import":
            return ["import", str(world.folders[op.source])]
        case "backup" | "backup-first":
            return ["backup"]
        case "forget":
            return ["forget", "--keep-last", "1"]
        case "prune-grace0":
            return ["prune", "--grace", "0"]
        case "prune":
            return ["prune", "--grace", "1h"]
        case "rollback":
            return ["rollback", world.phones["A"].udid, "--to", world.by_label("A day 0").id]
        case "key-add":
            return ["key", "add"]
        case "key-passwd":
            return ["key", "passwd"]
    raise ValueError(op.name)


def cli_env(op: Operation, rig: Rig) -> dict[str, str]:
    env = {}
    if op.emulator:
        env["USBMUXD_SOCKET_ADDRESS"] = rig.address(*op.emulator)
    if op.new_password:
        env["PHONEVAULT_NEW_PASSWORD"] = NEW_PASSWORD
    return env


def survivors(op: Operation, world: World) -> list[SnapDigest]:
    """The snapshots committed before the trial that must export bit-exact whatever the kill did."""
    snaps = world.digests(op.baseline)
    if op.name == "forget":  # the two the policy keeps; the others may or may not be forgotten yet
        return [s for s in snaps if s.label in ("A day 2", "B day 0 (backup)")]
    return snaps


def census(op: Operation, world: World, rig: Rig, where: Path) -> dict:
    """One uninterrupted run: how many file-system events, content bytes and links it makes, and how long it runs
    after its first progress marker."""
    trial = Trial(TrialSpec("census", op.name, "", world.seed))
    vault = world.baselines[op.baseline].clone(where)
    count = vault.tmp / "census"
    watch = (world.folders[op.source],) if op.source else ()
    child = Child(trial, vault, cli_args(op, world), watch=watch, count=count, **cli_env(op, rig))
    marked = time.monotonic()
    if op.marker and child.wait_for(op.marker):
        marked = time.monotonic()
    code = child.wait()
    tail = time.monotonic() - marked
    if code != 0 or trial.problems:
        raise HarnessError(f"census of {op.name} failed (exit {code}): {child.stderr[-600:]} {trial.problems}")
    events, nbytes, links = (int(x) for x in count.read_text().split())
    return {"events": events, "bytes": nbytes, "links": links, "tail_s": round(tail, 3)}


def run_kill(spec: TrialSpec, world: World, rig: Rig, where: Path) -> TrialResult:
    trial = Trial(spec)
    op = OPS[spec.operation]
    vault = world.baselines[op.baseline].clone(where, cache=not spec.params.get("cold", False))
    args, env = cli_args(op, world), cli_env(op, rig)
    watch = (world.folders[op.source],) if op.source else ()
    kind, value = spec.params["kind"], spec.params["value"]
    if kind == "timed":
        child = Child(trial, vault, args, **env)
        line = child.wait_for(op.marker)
        if line is not None:
            time.sleep(value)  # the kill's moment: T seconds into the operation (a timed trial's one delay)
            child.signal(signal.SIGKILL)
            child.point = f"{value:.3f} s after {line.strip()!r}"
    else:
        stop = Stop(f"{'event' if kind == 'link' else kind}:{value}", match=("os.link",) if kind == "link" else ())
        child = Child(trial, vault, args, stop=stop, watch=watch, **env)
    code = child.wait()
    if code == -signal.SIGKILL:
        trial.landed = "timed" if kind == "timed" else place_of(child.point) if child.point else "killed"
        trial.note(f"killed at {child.point}")
    elif code == 0:
        trial.note("the operation ended before its kill point (nothing was interrupted)")
    else:
        trial.problem(f"the operation failed on its own (exit {code}): {child.stderr.strip()[-300:]}")
    after_interruption(trial, op, world, rig, vault, "after the kill")
    return trial.result()


def after_interruption(trial: Trial, op: Operation, world: World, rig: Rig, vault: Vault, when: str) -> None:
    """The verdict on an interrupted operation, the operation again, and its promise."""
    password = PASSWORD
    if op.name == "key-passwd":
        password = opening_password(trial, vault, (PASSWORD, NEW_PASSWORD))
        if password is None:
            return
        if password == NEW_PASSWORD:
            trial.note("the old password was already replaced when the change was interrupted")
    verdict(trial, vault, survivors(op, world), when, password=password)
    rerun = pv(trial, vault, *cli_args(op, world), password=password, **cli_env(op, rig))
    if rerun.code != 0:
        trial.problem(f"running `{' '.join(rerun.args)}` again fails: exit {rerun.code}: {rerun.lines()[-2:]}")
        return
    _after(trial, op, world, vault)


def _after(trial: Trial, op: Operation, world: World, vault: Vault) -> None:
    """What the operation promises once it has completed. A prune run again deletes what the interrupted one only
    marked, so after it the survivors are checked and exported once more."""
    password = NEW_PASSWORD if op.name == "key-passwd" else PASSWORD
    if op.name.startswith("prune"):
        verdict(trial, vault, survivors(op, world), "after the re-run")
    snaps = live(trial, vault, password=password)
    if snaps is None:
        return
    before = set(world.live[op.baseline])
    ids = {s["id"] for s in snaps}
    if op.name in ("import", "backup", "backup-first"):
        phone = "A" if op.name == "import" else "B"
        new = [s["id"] for s in snaps if s["id"] not in before and s["device"] == world.phones[phone].udid]
        if not new:
            trial.problem(f"no new snapshot of {phone} after the re-run")
        for sid, got in library_exports(trial, vault, new[-2:]).items():
            if isinstance(got, str):
                trial.problem(f"the re-run's snapshot {sid[:8]} does not export: {got[:300]}")
            elif diff := _differs_from_source(op, world, got):
                trial.problem(f"the re-run's snapshot {sid[:8]} differs from its source: {diff}")
    elif op.name == "forget":
        keep = {s.id for s in survivors(op, world)}
        if ids != keep:
            trial.problem(f"after forget --keep-last 1 the live snapshots are {sorted(ids)}, expected {sorted(keep)}")
    elif ids != before:
        trial.problem(f"the live snapshots changed: {sorted(ids ^ before)}")
    if op.name == "rollback":
        current = [s["id"] for s in snaps if s["current"] and s["device"] == world.phones["A"].udid]
        if current != [world.by_label("A day 0").id]:
            trial.problem(f"after rollback the current snapshot of A is {current}, not day 0")
    if op.name == "key-add":
        for pw in (PASSWORD, NEW_PASSWORD):
            if (r := pv(trial, vault, "key", "list", "--json", password=pw)).code != 0:
                trial.problem(f"after key add, a password no longer opens the vault (exit {r.code})")
    if op.name == "key-passwd" and (r := pv(trial, vault, "key", "list", "--json", password=PASSWORD)).code != 12:
        trial.problem(f"after key passwd the old password still gives exit {r.code}, not 12")


def _differs_from_source(op: Operation, world: World, digest: Digest) -> list[str]:
    if op.name == "import":
        return differences(digest, world.folder_digests[op.source])
    content = {p: d for p, d in digest.items() if p not in BACKUP_CONSTRUCTED}
    return differences(content, world.device_content("B", op.emulator[1]), content_only=True)


# --- stops: in-process, on the faulty backend ---------------------------------------------------------------------


def library_op(op: Operation, repo: Repository, world: World, rig: Rig) -> None:
    match op.name:
        case "import":
            from phonevault.sync.mobilesync import import_folder

            import_folder(repo, world.folders[op.source])
        case "backup" | "backup-first":
            from phonevault.sync.backup2 import backup_device

            backup_device(repo, usbmux_address=rig.address(*op.emulator))
        case "forget":
            for view in repo.devices():
                apply_forget(repo, plan_forget(view, Policy(last=1)), "harness")
        case "prune-grace0":
            prune(repo, grace_us=0)
        case "prune":
            prune(repo, grace_us=3600 * 10**6)
        case "rollback":
            rollback(repo, *resolve_snapshot(repo, world.by_label("A day 0").id))
        case "key-add":
            keyring.add_key(repo.backend, repo.key, NEW_PASSWORD)
        case "key-passwd":
            keyring.change_password(repo.backend, repo.key, repo.key_id, NEW_PASSWORD)
        case _:
            raise ValueError(op.name)


def faulty(vault: Vault, rules=(), before=None) -> FaultyBackend:
    return FaultyBackend(LocalBackend(vault.repo), rules, before=before)


def open_faulty(vault: Vault, rules=(), before=None, password: str = PASSWORD) -> tuple[Repository, FaultyBackend]:
    backend = faulty(vault, rules, before)
    return Repository.open(backend, password, cache_root=vault.cache), backend


def close_quietly(repo: Repository) -> None:
    try:
        repo.close()
    except (OSError, PhonevaultError):
        pass  # the faulty backend's close may fail too; the cache closed before it


def write_census(op: Operation, world: World, rig: Rig, where: Path) -> list[tuple[str, str]]:
    """The write calls of one uninterrupted in-process run, in order: (method, object name)."""
    vault = world.baselines[op.baseline].clone(where)
    calls: list[tuple[str, str]] = []
    repo, _backend = open_faulty(vault, before=lambda m, n: calls.append((m, n)) if m in WRITES else None)
    try:
        library_op(op, repo, world, rig)
    finally:
        close_quietly(repo)
    return calls


def kind_of(name: str) -> str:
    return name.split("/", 1)[0] if "/" in name else name


def run_stop(spec: TrialSpec, world: World, rig: Rig, where: Path) -> TrialResult:
    trial = Trial(spec)
    op = OPS[spec.operation]
    method, nth, after = spec.params["method"], spec.params["nth"], spec.params["after"]
    vault = world.baselines[op.baseline].clone(where)
    holder: list[FaultyBackend] = []

    def gone(m: str, name: str) -> None:
        if holder and holder[0].fired:  # the stop has happened: the disk is gone for everything after it
            raise OSError(errno.EIO, "the disk is gone (harness stop)", name)

    repo, backend = open_faulty(vault, [Fail(method, nth, errno.EIO, after=after)], before=gone)
    holder.append(backend)
    try:
        library_op(op, repo, world, rig)
        trial.note("the operation completed despite the stop")
    except (OSError, PhonevaultError) as e:
        trial.note(f"stopped: {type(e).__name__}: {str(e)[:160]}")
    except Exception as e:  # noqa: BLE001 - any other type would be a traceback in the CLI
        trial.problem(f"the stopped operation raised {type(e).__name__} (untyped, a traceback in the CLI): {e}")
    finally:
        close_quietly(repo)
    if backend.fired:
        _rule, m, name = backend.fired[0]
        trial.landed = f"{'after' if after else 'before'} {m} {kind_of(name)}/"
        trial.faults_injected += 1
    else:
        trial.note("the stop never fired (the operation made fewer writes than its census)")
    after_interruption(trial, op, world, rig, vault, "after the stop")
    return trial.result()
