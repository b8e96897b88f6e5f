"""The world every trial starts from: synthetic phones, their backup folders, emulators, and baseline vaults.

Built once per run under `<out>/work/world/` with the real CLI (a step that fails aborts the run: a harness that
cannot build its baselines measures nothing). Phones (`SyntheticPhone(seed, size)`, seeds derived from the run's
seed): A (6 MiB, imported from folders, days 0–2), B (6 MiB, served by the emulator, days 0–1; also written as
folders for its expected content), C (4 MiB, a second device, day 0) and BIG (16 MiB, the disk-full case).

Baselines, each a `Vault` (vault + warm cache), each the one before plus a step:
  a-only     init (in-process, FAST_SCRYPT), import A day 0, import A day 1
  base       + device backup of B (day 0, over the emulator)
  three      + import A day 2
  forgotten  + forget --keep-last 1 (A's days 0 and 1 are forgotten, their data reclaimable)
  aged       + prune --grace 1h (marks), with its marker re-dated 2 h back — the vault as it is two hours
             later, so `prune --grace 1h` sweeps it
  damage     base + a spare key + an import of A day 2 killed between its pack and its index (a leftover pack,
             a dead writer's marker, a temporary file) + prune --grace 1h (a pending marker)
Each live snapshot's digest is recorded when it is committed, by exporting it (`snapshots[id]`); a folder import's
export must equal its folder, or the world is not built.

Emulators are per process (`Rig`): a trial that backs up B at day 1 asks `rig.emulator("B", 1)`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.sync.emulator import Emulator
from phonevault.sync.emulator.phone import SyntheticPhone

from .records import Trial, TrialSpec
from .vaults import (
    PASSWORD,
    SPARE_PASSWORD,
    Digest,
    Vault,
    differences,
    digest_bytes,
    folder_digest,
    pv,
)

PROBE = str(Path(__file__).with_name("probe.py"))
MiB = 1 << 20
PHONES = {"A": (1, 6 * MiB, 2), "B": (2, 6 * MiB, 1), "C": (3, 4 * MiB, 0), "BIG": (4, 16 * MiB, 0)}  # seed, size, days
# The baselines' first key is derived with a small scrypt cost, as the test suite's vaults are (the cost is a
# parameter stored in the key file, not a format change): every command of every trial derives it once.
FAST_SCRYPT = 2**10
BACKUP_CONSTRUCTED = ("Info.plist", "Status.plist", "Manifest.plist")  # written by the backup flow, not the phone


class HarnessError(Exception):
    """The harness could not set itself up (not a finding about phonevault)."""


@dataclass(frozen=True, slots=True)
class PhoneSpec:
    name: str
    seed: int
    size: int
    udid: str

    def phone(self) -> SyntheticPhone:
        return SyntheticPhone(seed=self.seed, size=self.size)


@dataclass(frozen=True, slots=True)
class SnapDigest:
    id: str
    device: str
    label: str  # "A day 1", "B day 0 (backup)"
    files: Digest

    @property
    def size(self) -> int:
        return digest_bytes(self.files)


@dataclass(slots=True)
class World:
    root: Path
    seed: int
    phones: dict[str, PhoneSpec] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)  # "A-d0" -> …/<udid>
    folder_digests: dict[str, Digest] = field(default_factory=dict)
    baselines: dict[str, Vault] = field(default_factory=dict)
    live: dict[str, list[str]] = field(default_factory=dict)  # baseline -> live snapshot ids at build time
    snapshots: dict[str, SnapDigest] = field(default_factory=dict)
    census: dict[str, dict] = field(default_factory=dict)  # filled by the rooms that need one (crash, faults)

    def digests(self, baseline: str) -> list[SnapDigest]:
        return [self.snapshots[i] for i in self.live[baseline]]

    def by_label(self, label: str) -> SnapDigest:
        return next(s for s in self.snapshots.values() if s.label == label)

    def device_content(self, phone: str, day: int) -> Digest:
        """What a device backup of `phone` on `day` must hold: the phone's own files, bit for bit."""
        return {p: d for p, d in self.folder_digests[f"{phone}-d{day}"].items() if p not in BACKUP_CONSTRUCTED}


class Rig:
    """This process's emulators, started on first use, one per (phone, day) so no trial waits for a day change."""

    def __init__(self, world: World, where: Path) -> None:
        self.world = world
        self.where = where
        self._emulators: dict[tuple[str, int, int], Emulator] = {}

    def emulator(self, phone: str, day: int, instance: int = 0) -> Emulator:
        """The emulated `phone` at `day`; another `instance` is a second emulator of the same phone (the same
        device reachable twice, for two backups of one device at once)."""
        key = (phone, day, instance)
        if key not in self._emulators:
            spec = self.world.phones[phone]
            data = self.where / f"emu-{phone}-d{day}-{instance}"
            shutil.rmtree(data, ignore_errors=True)  # an older run's phone there would be served as this one
            emu = Emulator(data, seed=spec.seed, size=spec.size, day=day)
            self._emulators[key] = emu.start()
        return self._emulators[key]

    def address(self, phone: str, day: int, instance: int = 0) -> str:
        return self.emulator(phone, day, instance).address

    def close(self) -> None:
        for emu in self._emulators.values():
            emu.stop()
        self._emulators.clear()


def _must(trial: Trial, run, what: str) -> None:
    if run.code != 0 or trial.problems:
        raise HarnessError(f"building the world: {what} failed (exit {run.code}): {run.stderr[-800:]}")


def _live(trial: Trial, vault: Vault) -> list[dict]:
    run = pv(trial, vault, "snapshots", "--json")
    _must(trial, run, "snapshots")
    return json.loads(run.stdout)


def _record(world: World, trial: Trial, vault: Vault, snap_id: str, device: str, label: str, folder: str | None):
    dest = vault.tmp / f"export-{snap_id[:12]}"
    _must(trial, pv(trial, vault, "export", snap_id, "--to", str(dest)), f"export of {label}")
    (exported,) = list(dest.iterdir())
    digest = folder_digest(exported)
    shutil.rmtree(dest)
    if folder is not None and (diff := differences(digest, world.folder_digests[folder])):
        raise HarnessError(f"building the world: the export of {label} differs from its folder: {diff}")
    world.snapshots[snap_id] = SnapDigest(snap_id, device, label, digest)


def _new_snapshot(world: World, trial: Trial, vault: Vault, label: str, folder: str | None) -> SnapDigest:
    known = set(world.snapshots)
    new = [s for s in _live(trial, vault) if s["id"] not in known]
    if len(new) != 1:
        raise HarnessError(f"building the world: expected one new snapshot for {label}, found {len(new)}")
    _record(world, trial, vault, new[0]["id"], new[0]["device"], label, folder)
    return world.snapshots[new[0]["id"]]


def _snapshot_baseline(world: World, trial: Trial, name: str, vault: Vault) -> None:
    world.baselines[name] = vault
    world.live[name] = [s["id"] for s in _live(trial, vault)]


def _grow(world: World, trial: Trial, parent: str, name: str) -> Vault:
    return world.baselines[parent].clone(world.root / "baselines" / name)


def build(root: Path, seed: int, rig_dir: Path) -> tuple[World, Rig]:
    """The world for `seed` under `root` (rebuilt from scratch), and a rig for this process."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    world = World(root, seed)
    trial = Trial(TrialSpec("world", "build", "", seed))
    for name, (k, size, days) in PHONES.items():
        phone = SyntheticPhone(seed=seed * 100 + k, size=size)
        world.phones[name] = PhoneSpec(name, seed * 100 + k, size, phone.udid)
        for day in range(days + 1):
            folder = phone.write_backup(root / "src" / f"{name}-d{day}", day)
            world.folders[f"{name}-d{day}"] = folder
            world.folder_digests[f"{name}-d{day}"] = folder_digest(folder)
    rig = Rig(world, rig_dir)

    v = Vault(root / "baselines" / "a-only")
    Repository.init(LocalBackend(v.repo), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=v.cache).close()
    for day in (0, 1):
        _must(trial, pv(trial, v, "import", str(world.folders[f"A-d{day}"])), f"import of A day {day}")
        _new_snapshot(world, trial, v, f"A day {day}", f"A-d{day}")
    _snapshot_baseline(world, trial, "a-only", v)

    v = _grow(world, trial, "a-only", "base")
    run = pv(trial, v, "backup", USBMUXD_SOCKET_ADDRESS=rig.address("B", 0))
    _must(trial, run, "backup of B day 0")
    got = _new_snapshot(world, trial, v, "B day 0 (backup)", None).files
    if diff := differences(
        {p: d for p, d in got.items() if p not in BACKUP_CONSTRUCTED}, world.device_content("B", 0), content_only=True
    ):
        raise HarnessError(f"building the world: B's day-0 backup differs from the phone: {diff}")
    _snapshot_baseline(world, trial, "base", v)

    v = _grow(world, trial, "base", "three")
    _must(trial, pv(trial, v, "import", str(world.folders["A-d2"])), "import of A day 2")
    _new_snapshot(world, trial, v, "A day 2", "A-d2")
    _snapshot_baseline(world, trial, "three", v)

    v = _grow(world, trial, "three", "forgotten")
    _must(trial, pv(trial, v, "forget", "--keep-last", "1"), "forget --keep-last 1")
    _snapshot_baseline(world, trial, "forgotten", v)
    if len(world.live["forgotten"]) != 2:
        raise HarnessError(f"building the world: forget kept {world.live['forgotten']}")

    v = _grow(world, trial, "forgotten", "aged")
    _must(trial, pv(trial, v, "prune", "--grace", "1h"), "prune --grace 1h (mark)")
    if not _age_prune_markers(v, hours=2):
        raise HarnessError("building the world: prune --grace 1h on `forgotten` marked nothing")
    _snapshot_baseline(world, trial, "aged", v)

    v = _grow(world, trial, "base", "damage")
    _must(trial, pv(trial, v, "key", "add", PHONEVAULT_NEW_PASSWORD=SPARE_PASSWORD), "key add")
    _kill_between_pack_and_index(trial, v, world.folders["A-d2"])
    _must(trial, pv(trial, v, "prune", "--grace", "1h"), "prune --grace 1h (mark)")
    if not list((v.repo / "prune").iterdir()) or not list((v.repo / "writers").iterdir()):
        raise HarnessError("building the world: the damage baseline lacks a prune or a writer marker")
    _snapshot_baseline(world, trial, "damage", v)
    return world, rig


def _kill_between_pack_and_index(trial: Trial, vault: Vault, folder: Path) -> None:
    """An import SIGKILLed as it renames its first index object into place: its pack is durable, no index
    describes it, its writers/ marker stays behind (fresh for ten minutes), and a temporary file is left."""
    cmd = [sys.executable, PROBE, "--watch", str(vault.repo), "--match", "os.rename", "--match", "/index/"]
    cmd += ["--at", "event:1", "--", "import", str(folder)]
    p = subprocess.run(cmd, env=vault.env(), capture_output=True, text=True, timeout=300)
    if p.returncode != -9 or "PV-PROBE-POINT" not in p.stderr:
        raise HarnessError(f"building the world: the killed import did not stop where asked: {p.stderr[-800:]}")


def _age_prune_markers(vault: Vault, hours: float) -> int:
    """Re-date every prune marker `hours` back (name and content), as the vault holds it that much later; how
    many there were."""
    import msgpack

    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.prune import MARKER_AD, read_markers
    from phonevault.store.repository import Repository

    with Repository.open(LocalBackend(vault.repo), PASSWORD, cache_root=vault.cache) as repo:
        for name, t, packs in read_markers(repo):
            older = t - int(hours * 3600 * 10**6)
            new_name = f"prune/{older:020d}-{name.rsplit('-', 1)[1]}"
            sealed = repo.key.seal(msgpack.packb([1, older, packs]), MARKER_AD)
            repo.backend.put_exclusive(new_name, sealed)
            repo.backend.delete(name)
        return len(read_markers(repo))
