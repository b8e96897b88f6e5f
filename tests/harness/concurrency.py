"""Concurrency trials: two writers at once, made to overlap on purpose rather than by luck.

Overlap is forced with the probe (probe.py): a child pauses at a chosen file-system event, the harness SIGSTOPs it
there, starts or finishes the other side, then releases it (SIGCONT). So each trial's interleaving is the one its
spec names on any machine, not whatever the scheduler picked.

- `two-devices`: backups of B and C (or an import of C and a backup of B) into one vault, both paused mid-way and
  released together: both commit (exit 0) and each new snapshot holds its device's files bit for bit.
- `one-device`: two writers of the same device (import+import of A, backup+import or backup+backup of B): the
  first is held at its commit point (the os.link of its event segment) or mid-staging while the second commits;
  then the first must exit 11 (another backup committed first) and succeed when run again — if the second's commit
  became current. A backup older than the current one goes into history without moving the head and conflicts
  with nobody: then both commit (exit 0).
- `prune-during`: a backup of B held mid-way, or a re-import of A day 1 (forgotten: the prune reclaims the very
  packs the import reuses) held once registered, at its first pack or at its first index object, while
  `prune --grace 0` runs; it must then commit, a second prune must succeed, and everything checks and exports.
- `two-copies`: `cp -r` of a vault; both copies use one cache folder (same repo id), each gets its own import
  (one after the other, or both at once); each checks clean, sees only its own new snapshot, exports bit-exact.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from .child import Child, Stop, place_of
from .records import Trial, TrialResult, TrialSpec
from .vaults import Vault, differences, pv
from .verdict import check_clean, exports_exact, library_exports, live, verdict
from .world import BACKUP_CONSTRUCTED, Rig, World


def _hold(child: Child, trial: Trial, what: str) -> bool:
    """Wait until the child reaches its pause point, then stop the whole process there."""
    if not child.wait_point():
        trial.problem(f"{what} never reached its pause point (exit {child.p.poll()}): {child.stderr[-300:]}")
        return False
    child.signal(signal.SIGSTOP)
    return True


def _matches(trial: Trial, world: World, vault: Vault, snap: dict, source: str, *, device: bool, **kw) -> None:
    """A new snapshot holds what its source held: a folder bit-exact, or a device's files byte for byte."""
    digest = library_exports(trial, vault, [snap["id"]], **kw)[snap["id"]]
    if isinstance(digest, str):
        trial.problem(f"new snapshot {snap['id'][:8]} ({source}) does not export: {digest[:300]}")
        return
    if device:
        phone, day = source.split("-d")
        got = {p: d for p, d in digest.items() if p not in BACKUP_CONSTRUCTED}
        diff = differences(got, world.device_content(phone, int(day)), content_only=True)
    else:
        diff = differences(digest, world.folder_digests[source])
    if diff:
        trial.problem(f"new snapshot {snap['id'][:8]} differs from {source}: {diff}")


def _new(trial: Trial, world: World, vault: Vault, baseline: str) -> dict[str, list[dict]]:
    """New live snapshots since the baseline, by phone name."""
    by_udid = {p.udid: name for name, p in world.phones.items()}
    out: dict[str, list[dict]] = {}
    for s in live(trial, vault) or []:
        if s["id"] not in world.live[baseline]:
            out.setdefault(by_udid.get(s["device"], "?"), []).append(s)
    return out


def _writer(spec_kind: str, world: World, rig: Rig, instance: int = 0) -> tuple[list[str], dict, tuple, str, bool]:
    """args, env, watched folders, source label, is-a-device for one side of a trial, e.g. "backup:B-d1"."""
    what, source = spec_kind.split(":")
    if what == "backup":
        phone, day = source.split("-d")
        return ["backup"], {"USBMUXD_SOCKET_ADDRESS": rig.address(phone, int(day), instance)}, (), source, True
    return ["import", str(world.folders[source])], {}, (world.folders[source],), source, False


def run_concurrency(spec: TrialSpec, world: World, rig: Rig, where: Path) -> TrialResult:
    trial = Trial(spec)
    {
        "two-devices": _two_devices,
        "one-device": _one_device,
        "prune-during": _prune_during,
        "two-copies": _two_copies,
    }[spec.operation](trial, spec, world, rig, where)
    return trial.result()


def _two_devices(trial: Trial, spec: TrialSpec, world: World, rig: Rig, where: Path) -> None:
    vault = world.baselines["a-only"].clone(where)
    kids = []
    for side, at in zip(spec.params["sides"], spec.params["at"], strict=True):
        args, env, watch, _src, _dev = _writer(side, world, rig)
        kid = Child(trial, vault, args, stop=Stop(f"event:{at}", then="pause"), watch=watch, **env)
        if not _hold(kid, trial, side):
            return
        kids.append(kid)
    trial.landed = " + ".join(place_of(k.point) for k in kids)
    for kid in kids:
        kid.release()
    codes = [kid.wait() for kid in kids]
    if codes != [0, 0]:
        trial.problem(f"two devices at once: exits {codes}, expected [0, 0]: {[k.stderr[-200:] for k in kids]}")
    verdict(trial, vault, world.digests("a-only"), "after two devices at once")
    new = _new(trial, world, vault, "a-only")
    for side in spec.params["sides"]:
        _what, source = side.split(":")
        got = new.get(source.split("-d")[0], [])
        if len(got) != 1:
            trial.problem(f"{side}: {len(got)} new snapshots, expected 1")
        for s in got:
            _matches(trial, world, vault, s, source, device=side.startswith("backup"))


def _one_device(trial: Trial, spec: TrialSpec, world: World, rig: Rig, where: Path) -> None:
    baseline = spec.params["baseline"]
    vault = world.baselines[baseline].clone(where)
    first, second = spec.params["sides"]
    args1, env1, watch1, src1, dev1 = _writer(first, world, rig, instance=0)
    args2, env2, _w2, src2, dev2 = _writer(second, world, rig, instance=1)
    at = spec.params["at"]
    stop = Stop("event:1", "pause", ("os.link", "/events/")) if at == "commit" else Stop(f"event:{at}", "pause")
    held = Child(trial, vault, args1, stop=stop, watch=watch1, **env1)
    if not _hold(held, trial, first):
        return
    trial.landed = f"first held at {'its commit point' if at == 'commit' else place_of(held.point)}"
    r2 = pv(trial, vault, *args2, **env2)
    # The held writer loses only if the other's commit became current (its backup date is at least the head's:
    # an older backup imported late goes into history without moving the head, and conflicts with nobody).
    phone = src1.split("-d")[0]
    winner = _new(trial, world, vault, baseline).get(phone, [])
    moved = any(s["current"] for s in winner)
    held.release()
    c1 = held.wait()
    want = 11 if moved else 0
    if (c1, r2.code) != (want, 0):
        trial.problem(f"one device, two writers: the held one exits {c1} (expected {want}: the other's commit "
                      f"{'moved' if moved else 'did not move'} the head), the other {r2.code} (expected 0)")  # fmt: skip
    elif c1 == 11 and "committed first" not in held.stderr:
        trial.problem(f"exit 11 without saying another backup committed first: {held.stderr[-200:]}")
    trial.note(f"the other writer's commit {'became' if moved else 'did not become'} current")
    verdict(trial, vault, world.digests(baseline), "after two writers of one device")
    if c1 == 11:
        again = pv(trial, vault, *args1, **env1)
        if again.code != 0:
            trial.problem(f"the writer that lost, run again, fails: exit {again.code}: {again.lines()[-1:]}")
        check_clean(trial, vault, "after the loser ran again", read_data=False)
    got = _new(trial, world, vault, baseline).get(phone, [])
    if len(got) != 2:
        trial.problem(f"{len(got)} new snapshots of {phone}, expected 2 (the winner's and the re-run's or the other's)")
    for s in got:
        first = s["id"] not in {w["id"] for w in winner}
        _matches(trial, world, vault, s, src1 if first else src2, device=dev1 if first else dev2)


def _prune_during(trial: Trial, spec: TrialSpec, world: World, rig: Rig, where: Path) -> None:
    vault = world.baselines["forgotten"].clone(where)
    side = spec.params["side"]
    args, env, watch, src, dev = _writer(side, world, rig)
    stop = Stop(f"event:{spec.params['at']}", "pause", tuple(spec.params.get("match", ())))
    held = Child(trial, vault, args, stop=stop, watch=watch, **env)
    if not _hold(held, trial, side):
        return
    trial.landed = f"writer held at {place_of(held.point)}"
    p = pv(trial, vault, "prune", "--grace", "0")
    if p.code != 0:
        trial.problem(f"prune --grace 0 during a backup fails: exit {p.code}: {p.lines()[-1:]}")
    held.release()
    code = held.wait()
    if code != 0:
        trial.problem(f"the backup a prune ran during fails: exit {code}: {held.stderr.strip()[-300:]}")
    again = pv(trial, vault, "prune", "--grace", "0")
    if again.code != 0:
        trial.problem(f"prune --grace 0 after the backup fails: exit {again.code}: {again.lines()[-1:]}")
    verdict(trial, vault, world.digests("forgotten"), "after a prune during a backup")
    got = _new(trial, world, vault, "forgotten").get(src.split("-d")[0], [])
    if code == 0 and len(got) != 1:
        trial.problem(f"{len(got)} new snapshots after the backup, expected 1")
    for s in got:
        _matches(trial, world, vault, s, src, device=dev)


def _two_copies(trial: Trial, spec: TrialSpec, world: World, rig: Rig, where: Path) -> None:
    one = world.baselines["base"].clone(where / "one")
    two = Vault(where / "two")
    two.root.mkdir(parents=True)
    shutil.copytree(one.repo, two.repo, symlinks=True)  # cp -r of the vault; the cache folder is shared below
    shared = {"PHONEVAULT_CACHE_DIR": str(one.cache)}
    sides = (("import:A-d2", one), ("import:C-d0", two))
    if spec.params["together"]:
        kids = [Child(trial, v, _writer(s, world, rig)[0], **shared) for s, v in sides]
        codes = [k.wait() for k in kids]
    else:
        codes = [pv(trial, v, *_writer(s, world, rig)[0], **shared).code for s, v in sides]
    if codes != [0, 0]:
        trial.problem(f"imports into two copies of one vault: exits {codes}")
    trial.landed = "both at once" if spec.params["together"] else "one after the other"
    for side, v in sides:
        source = side.split(":")[1]
        run = pv(trial, v, "check", "--read-data", "--json", **shared)
        if run.code != 0:
            trial.problem(f"the copy that imported {source} does not check clean: {run.stdout[-300:]}")
        by_phone = {}
        for s in live(trial, v, **shared) or []:
            if s["id"] not in world.live["base"]:
                by_phone.setdefault(s["device"], []).append(s)
        mine = by_phone.pop(world.phones[source.split("-d")[0]].udid, [])
        if len(mine) != 1 or by_phone:
            trial.problem(f"the copy that imported {source} sees {len(mine)} own and {len(by_phone)} other new")
        for s in mine:
            _matches(trial, world, v, s, source, device=False, cache=one.cache)
    exports_exact(trial, two, world.digests("base"), "from the copy", cache=one.cache)
