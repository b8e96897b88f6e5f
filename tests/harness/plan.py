"""Which trials a run holds: `full` (≥ 300 kills and every stop, fault, damage and race listed below) or `ci` (~30
chosen to touch every room in a few minutes). Every choice is drawn from `random.Random(seed)` and the censuses,
so a run is reproduced by its seed; each spec carries its own seed for the trial's own draws.

Censuses are taken here, on demand, in this process (one uninterrupted run of each operation used): the CLI
kills need event, byte and link counts (crash.census), the stops the sequence of write calls
(crash.write_census), the faults calls per method and the fault-free result (faults.census), the damage trials
the damage map (damage.map_damage).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from . import crash, damage, faults
from .records import TrialSpec
from .world import HarnessError, Rig, World

# CLI kills per operation in --full: (event, link, bytes, timed)
# Each operation links one object (its commit, a key) at most: two link kills (warm and cold cache) are enough.
FULL_KILLS = {
    "import": (38, 2, 16, 10),
    "backup": (28, 2, 8, 6),
    "backup-first": (18, 2, 6, 4),
    "forget": (22, 2, 0, 0),
    "prune-grace0": (36, 2, 0, 0),
    "prune": (30, 2, 0, 0),
    "rollback": (18, 2, 0, 0),
    "key-add": (20, 2, 0, 0),
    "key-passwd": (30, 2, 0, 0),
}
CI_KILLS = {
    "import": (2, 0, 1, 0),
    "backup": (1, 1, 0, 0),
    "forget": (1, 0, 0, 0),
    "prune-grace0": (1, 1, 0, 0),
    "prune": (1, 0, 0, 0),
    "rollback": (0, 1, 0, 0),
    "key-add": (1, 0, 0, 0),
    "key-passwd": (2, 0, 0, 0),
}
READ_METHODS = ("get", "get_range", "list", "exists")
WRITE_METHODS = ("put", "put_exclusive", "delete")


class Censuses:
    """Each census once per run, taken when a plan first needs it."""

    def __init__(self, world: World, rig: Rig, where: Path) -> None:
        self.world, self.rig, self.where = world, rig, where

    def _get(self, key: str, make: Callable[[Path], object]):
        if key not in self.world.census:
            try:
                self.world.census[key] = make(self.where / key.replace(":", "-"))
            except HarnessError:
                raise
            except Exception as e:  # noqa: BLE001 - an operation that fails unstopped: nothing to measure against
                raise HarnessError(f"census {key}: the operation fails on its own: {type(e).__name__}: {e}") from e
        return self.world.census[key]

    def kill(self, op: str) -> dict:
        return self._get(f"kill:{op}", lambda d: crash.census(crash.OPS[op], self.world, self.rig, d))

    def writes(self, op: str) -> list[tuple[str, str]]:
        return self._get(f"stop:{op}", lambda d: crash.write_census(crash.OPS[op], self.world, self.rig, d))

    def fault(self, op: str) -> dict:
        return self._get(f"fault:{op}", lambda d: faults.census(op, self.world, self.rig, d))

    def damage(self) -> dict:
        return self._get("damage", lambda _d: damage.map_damage(self.world))


def _spread(rng: random.Random, n: int, top: int) -> list[int]:
    """n points in 1..top, as evenly spread as a random draw allows (every point once before any repeats)."""
    out: list[int] = []
    while len(out) < n and top > 0:
        out += sorted(rng.sample(range(1, top + 1), min(n - len(out), top)))
    return out


def kills(c: Censuses, rng: random.Random, table: dict) -> list[TrialSpec]:
    specs = []
    for op, (n_event, n_link, n_bytes, n_timed) in table.items():
        census = c.kill(op)
        # (kind, value, label, cold cache or None to draw it): link kills alternate warm and cold, since an
        # operation links one object at most and the cache is what differs between them.
        draws = [("event", v, f"event {v}/{census['events']}", None) for v in _spread(rng, n_event, census["events"])]
        links = _spread(rng, n_link, census["links"])
        draws += [("link", v, f"link {v}/{census['links']}", i % 2 == 1) for i, v in enumerate(links)]
        draws += [("bytes", v, f"byte {v}/{census['bytes']}", None) for v in _spread(rng, n_bytes, census["bytes"])]
        for _ in range(n_timed):
            t = round(rng.uniform(0, census["tail_s"]), 3)
            draws.append(("timed", t, f"{t:.3f} s of {census['tail_s']:.2f} s", None))
        for kind, value, label, forced in draws:
            cold = forced if forced is not None else rng.random() < 0.25
            variant = label + (", cold cache" if cold else "")
            params = {"kind": kind, "value": value, "cold": cold}
            specs.append(TrialSpec("crash", op, variant, rng.randrange(2**31), params))
    return specs


def stops(c: Censuses, rng: random.Random, ops: list[str], pick: Callable[[list], list] | None = None) -> list:
    specs = []
    for op in ops:
        calls = c.writes(op)
        seen: dict[str, int] = {}
        points = []
        for k, (method, name) in enumerate(calls, 1):
            seen[method] = seen.get(method, 0) + 1
            for after in (False, True):
                params = {"k": k, "method": method, "nth": seen[method], "after": after}
                label = f"{'after' if after else 'before'} write {k}/{len(calls)}: {method} {crash.kind_of(name)}/"
                points.append(TrialSpec("stop", op, label, rng.randrange(2**31), params))
        specs += pick(points) if pick else points
    return specs


def fault_specs(c: Censuses, rng: random.Random, op: str, n_read: int, n_write: int) -> list[TrialSpec]:
    census = c.fault(op)
    calls = census["calls"]
    reads = [m for m in READ_METHODS if calls.get(m)]
    ranged = [m for m in ("get", "get_range") if calls.get(m)]
    writes = [m for m in WRITE_METHODS if calls.get(m)] if faults.FAULT_OPS[op].writes else []
    kinds = ["eio", "short", "flip"] * n_read
    if writes:
        kinds += ["eio-w", "eio-after", "full"] * n_write
    specs = []
    for kind in kinds:
        params: dict = {"kind": kind}
        if kind == "full":
            params["capacity"] = rng.randrange(0, max(1, census["written"]))
            label = f"disk full after {params['capacity']} of {census['written']} bytes"
        else:
            pool = {"eio": reads, "short": ranged, "flip": ranged, "eio-w": writes, "eio-after": writes}[kind]
            if not pool:
                continue
            method = rng.choice(pool)
            params.update(method=method, nth=rng.randint(1, calls[method]))
            if kind == "short":
                params["drop"] = rng.randint(1, 64)
            if kind == "flip":
                params["bit"] = rng.randrange(1 << 20)
            label = f"{kind.removesuffix('-w')} {method} #{params['nth']}/{calls[method]}"
        specs.append(TrialSpec("fault", op, label, rng.randrange(2**31), params))
    return specs


def log_fault_specs(c: Censuses, rng: random.Random, op: str, n: int) -> list[TrialSpec]:
    """Faults on the reads of event-log segments, with a cold cache so every segment is read whole."""
    baseline = c.world.baselines[faults.FAULT_OPS[op].baseline]
    segments = sum(1 for p in (baseline.repo / "events").rglob("*") if p.is_file())
    specs = []
    for kind in (["flip", "short", "eio"] * n)[:n]:
        nth = rng.randint(1, segments)
        params = {"kind": kind, "method": "get", "nth": nth, "prefix": "events/", "cold": True}
        params.update(bit=rng.randrange(1 << 12), drop=rng.randint(1, 64))
        label = f"{kind} of log segment read {nth}/{segments}, cold cache"
        specs.append(TrialSpec("fault", op, label, rng.randrange(2**31), params))
    return specs


def damage_specs(c: Censuses, rng: random.Random, only: list[tuple[str, str]] | None = None) -> list[TrialSpec]:
    dmap = c.damage()
    specs = []
    modes = lambda name: damage.MODES + (damage.KEY_MODES if name.startswith("keys/") else ())  # noqa: E731
    targets = only or [(name, mode) for name in sorted(dmap["objects"]) for mode in modes(name)]
    for name, mode in targets:
        op = "only-key" if name == "only-key" else name.split("/", 1)[0].split(":")[0]
        obj = dmap["opening_key"] if name == "only-key" else name
        label = f"{mode} {name if len(name) < 40 else name[:40] + '…'}"
        specs.append(TrialSpec("damage", op, label, rng.randrange(2**31), {"object": obj, "mode": mode}))
    if only is None:
        for mode in damage.MODES + damage.KEY_MODES:
            specs.append(TrialSpec("damage", "only-key", f"{mode} the only key", rng.randrange(2**31), {"mode": mode}))
    return specs


def _conc(rng: random.Random, op: str, label: str, params: dict) -> TrialSpec:
    return TrialSpec("concurrency", op, label, rng.randrange(2**31), params)


def concurrency_specs(c: Censuses, rng: random.Random, full: bool) -> list[TrialSpec]:
    first = c.kill("backup-first")["events"]
    backup = c.kill("backup")["events"]
    imp = c.kill("import")["events"]  # the census of importing A day 2 into `base`
    specs = []
    pairs = [("backup:B-d0", "backup:C-d0"), ("import:C-d0", "backup:B-d0")]
    for sides in pairs if full else pairs[:1]:
        for _ in range(2 if full else 1):
            at = [rng.randint(1, int(first * 0.8)), rng.randint(1, int(first * 0.4))]
            specs.append(
                _conc(rng, "two-devices", f"{sides[0]} + {sides[1]} at events {at}", {"sides": sides, "at": at})
            )
    one = [
        ("base", ("import:A-d2", "import:A-d2"), "commit"),
        ("base", ("backup:B-d1", "import:B-d1"), "commit"),
        ("base", ("import:A-d2", "import:A-d2"), rng.randint(1, imp)),
        ("base", ("backup:B-d1", "import:B-d1"), rng.randint(1, backup)),
        ("base", ("backup:B-d1", "backup:B-d1"), "commit"),
        ("base", ("backup:B-d1", "backup:B-d1"), rng.randint(1, backup)),
    ]
    for baseline, sides, at in one if full else one[:1]:
        label = f"{sides[0]} held at {'its commit' if at == 'commit' else f'event {at}'}, {sides[1]} commits"
        specs.append(_conc(rng, "one-device", label, {"baseline": baseline, "sides": sides, "at": at}))
    for _ in range(3 if full else 1):
        at = rng.randint(1, int(backup * 0.9))
        specs.append(
            _conc(rng, "prune-during", f"backup:B-d1 held at event {at}/{backup}", {"side": "backup:B-d1", "at": at})
        )
    # A re-import of A day 1 reuses, from its stat cache, exactly the packs the prune reclaims: held where it has
    # registered, where its first pack lands, where its first index object lands (every reuse decided).
    for where in ("/writers/", "/packs/", "/index/") if full else ():
        params = {"side": "import:A-d1", "at": 1, "match": ("os.rename", where)}
        specs.append(_conc(rng, "prune-during", f"import:A-d1 held at its first {where.strip('/')} put", params))
    for together in (False, True) if full else (False,):
        label = "imports at once" if together else "imports one after the other"
        specs.append(_conc(rng, "two-copies", label, {"together": together}))
    return specs


def full_plan(c: Censuses, seed: int) -> list[TrialSpec]:
    rng = random.Random(seed)
    specs = kills(c, rng, FULL_KILLS)
    specs += stops(c, rng, list(crash.OPS))
    for op, spec in faults.FAULT_OPS.items():
        specs += fault_specs(c, rng, op, 2, 2 if spec.writes else 0)
    for op in ("prune", "forget", "rollback", "import", "export"):  # commands that fold a log before writing
        specs += log_fault_specs(c, rng, op, 6 if op == "prune" else 3)
    specs.append(TrialSpec("fault", "disk-full", "16 MiB tmpfs, grown to 256 MiB", rng.randrange(2**31)))
    specs += damage_specs(c, rng)
    specs += concurrency_specs(c, rng, full=True)
    return specs


def ci_plan(c: Censuses, seed: int) -> list[TrialSpec]:
    rng = random.Random(seed)
    specs = kills(c, rng, CI_KILLS)

    def mid_index(points: list[TrialSpec]) -> list[TrialSpec]:
        """Stopped before the first index/ write (its pack is durable): the mid-index case."""
        return [p for p in points if "index/" in p.variant and not p.params["after"]][:1]

    def commit_after(points: list[TrialSpec]) -> list[TrialSpec]:
        """The commit durable but never acknowledged."""
        return [p for p in points if "events/" in p.variant and p.params["after"]][:1]

    specs += stops(c, rng, ["import"], mid_index)
    specs += stops(c, rng, ["backup"], commit_after)
    specs += stops(c, rng, ["key-passwd"], lambda pts: [p for p in pts if p.params["method"] == "delete"][:1])
    for op, kind in (("import", "eio-w"), ("export", "flip"), ("check", "flip"), ("prune", "eio-w"), ("ls", "short")):
        specs += [s for s in fault_specs(c, rng, op, 1, 1) if s.params["kind"] == kind][:1]
    specs += [s for s in fault_specs(c, rng, "backup", 0, 1) if s.params["kind"] == "full"][:1]
    specs.append(TrialSpec("fault", "disk-full", "16 MiB tmpfs, grown to 256 MiB", rng.randrange(2**31)))
    dmap = c.damage()
    packs = sorted((n for n in dmap["objects"] if n.startswith("packs/")), key=lambda n: -len(dmap["affects"][n]))
    events = sorted(n for n in dmap["objects"] if n.startswith("events/"))
    chosen = [(packs[0], "flip"), (f"index/{packs[0].rsplit('/', 1)[1]}", "delete"), (events[0], "truncate")]
    chosen += [(damage.CACHE_OBJECT, "flip")]
    specs += damage_specs(c, rng, chosen)
    specs.append(TrialSpec("damage", "only-key", "delete the only key", rng.randrange(2**31), {"mode": "delete"}))
    specs += concurrency_specs(c, rng, full=False)
    return specs
