"""Damage trials: one object of the `damage` baseline bit-flipped, truncated or deleted, then `check` and exports.

Objects: config, keys/ (the key the password opens, and a spare; also a bit flipped inside its "kdf" value), every packs/ and index/ object, every events/
segment, the prune/ marker, the writers/ marker a killed import left, and the local cache's data.mdb; plus the only
key of a one-key vault (`only-key`). Which live snapshots each object can take down (`map_damage`): a pack or its
index object — the snapshots with a blob in that pack; a segment — the snapshot it commits; config or the opening
key — all of them; a spare key, a marker, the cache — none.

Per trial, as a user would meet it: `check --json` and `check --read-data --json` with the warm cache, and
`check --read-data --json` with an empty cache (a second machine), then every snapshot exported. The rules:
- no traceback; the checks leave every other object of the vault as it was;
- a snapshot the damaged object cannot take down exports bit-exact (nothing else lost: `bytes_lost`);
- an export that exits 0 is bit-exact, whatever the damage (no silent corruption);
- damage a snapshot's export runs into is detected by one of the checks; damage no check reports must have no
  effect (every snapshot exports bit-exact, none appears or disappears): `damage_harmless`. The one exception is
  by design: a log's last segment deleted leaves no trace (no object points at a log's tail), so its events are
  gone unnoticed; such trials are counted and named, not failed;
- a check with the warm cache that misses what the cold one finds trusts the cache for vault content;
- unrecoverable damage (config, the only key, the key the password opens) is one clear error line; the spare
  key's password then still opens everything;
- an export of a damaged snapshot writes every intact file and names each one it left out (exit 3), unless the
  damage took its root tree node (then one line, exit 1); check --read-data names, for each snapshot a damaged
  pack costs files, the files it loses (both were known gaps while this harness was written; known.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from phonevault.store.backends.local import LocalBackend
from phonevault.store.prune import snapshot_blobs
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree

from .faults import unnamed_paths
from .records import Trial, TrialResult, TrialSpec
from .vaults import PASSWORD, SPARE_PASSWORD, Run, Vault, differences, pv
from .verdict import export, exports_exact, live
from .world import World

CACHE_OBJECT = "cache:data.mdb"
MODES = ("flip", "truncate", "delete")
KEY_MODES = ("flip-kdf",)  # a random flip rarely lands in the few bytes that name the KDF


def map_damage(world: World) -> dict:
    """The damage baseline's objects, and which live snapshots each can take down (ids), from the library."""
    vault = world.baselines["damage"]
    objects: dict[str, int] = {}
    affects: dict[str, list[str]] = {}
    pack_files: dict[str, list[str]] = {}
    roots: dict[str, str] = {}  # snapshot id -> the pack holding its root tree node (no tree, no file names)
    snaps = world.live["damage"]
    with Repository.open(LocalBackend(vault.repo), PASSWORD, cache_root=vault.cache) as repo:
        for name, size in repo.backend.list(""):
            objects[name] = size
            affects[name] = []
        opening = f"keys/{repo.key_id}"
        for key in repo.device_keys():
            view = repo.view(key)
            for s in view.live():
                if s.hex not in snaps:
                    continue
                affects[f"events/{key}/{s.seq:010d}"].append(s.hex)
                blobs = set(snapshot_blobs(repo, s, set())) | set(s.deltas)
                if (root := repo.locate(s.tree)) is not None:
                    roots[s.hex] = root.pack
                packs = {loc.pack for b in blobs if (loc := repo.locate(b)) is not None}
                for p in packs:
                    for name in (f"packs/{p[:2]}/{p}", f"index/{p}"):
                        affects[name].append(s.hex)
                for path, entry in load_tree(s.tree, repo.get_blob).items():
                    for chunk in entry.chunks:
                        if (loc := repo.locate(chunk)) is not None:
                            pack_files.setdefault(loc.pack, []).append(path)
        last = {}
        for name in objects:
            if name.startswith("events/"):
                device = name.split("/")[1]
                last[device] = max(last.get(device, name), name)
    affects["config"] = list(snaps)
    affects[opening] = list(snaps)
    objects[CACHE_OBJECT] = (vault.cache / _cache_id(vault) / "data.mdb").stat().st_size
    affects[CACHE_OBJECT] = []
    spare = next(n for n in objects if n.startswith("keys/") and n != opening)
    return {
        "objects": objects,
        "affects": affects,
        "opening_key": opening,
        "spare_key": spare,
        "last_segments": sorted(last.values()),
        "pack_files": {p: sorted(set(f))[:400] for p, f in pack_files.items()},
        "roots": roots,
    }


def _cache_id(vault: Vault) -> str:
    (only,) = [p.name for p in vault.cache.iterdir() if p.is_dir()]
    return only


def _path_of(vault: Vault, name: str) -> Path:
    if name == CACHE_OBJECT:
        return vault.cache / _cache_id(vault) / "data.mdb"
    return vault.repo / name


def damage(path: Path, mode: str, rng: random.Random) -> str:
    """Apply the damage; a description of exactly what was done."""
    size = path.stat().st_size
    if mode == "delete":
        path.unlink()
        return "deleted"
    if mode == "flip-kdf":  # one bit inside a key file's "kdf" value: still JSON, now naming a KDF nobody knows
        raw = bytearray(path.read_bytes())
        at = raw.index(b'"', raw.index(b":", raw.index(b'"kdf"'))) + 4
        raw[at] ^= 0x01
        path.write_bytes(bytes(raw))
        return f"byte {at} (inside the kdf value) flipped"
    if mode == "truncate":
        keep = rng.randrange(0, size)
        os.truncate(path, keep)
        return f"truncated to {keep} of {size} bytes"
    bit = rng.randrange(size * 8)
    with open(path, "r+b") as f:
        f.seek(bit // 8)
        byte = f.read(1)[0]
        f.seek(bit // 8)
        f.write(bytes([byte ^ (0x80 >> (bit % 8))]))
    return f"bit {bit} of {size * 8} flipped"


def _fingerprint(root: Path, skip: Path | None) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p != skip and not p.name.startswith("."):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check(trial: Trial, vault: Vault, read_data: bool, password: str, **env: str) -> tuple[Run, dict | None]:
    args = ["check", "--read-data", "--json"] if read_data else ["check", "--json"]
    run = pv(trial, vault, *args, password=password, **env)
    try:
        doc = json.loads(run.stdout)
    except ValueError:
        doc = None
    return run, doc


def _found(run: Run, doc: dict | None, name: str) -> bool:
    """The check reported the damage: it failed, or it names the object in a note."""
    if run.code != 0 or doc is None or not doc.get("ok", False):
        return True
    tail = name.rsplit("/", 1)[-1][:16]
    return any(tail in n for n in doc.get("notes", []))


def run_damage(spec: TrialSpec, world: World, where: Path) -> TrialResult:
    trial = Trial(spec)
    dmap = world.census["damage"]
    name, mode = spec.params.get("object", ""), spec.params["mode"]
    rng = random.Random(spec.seed)
    vault = world.baselines["damage"].clone(where)
    password = PASSWORD
    affected = set(dmap["affects"].get(name, []))
    if spec.operation == "only-key":  # a one-key vault: the spare key removed first (as `key` removal does)
        (vault.repo / dmap["spare_key"]).unlink()
        name = dmap["opening_key"]
    path = _path_of(vault, name)
    before = _fingerprint(vault.repo, path)
    trial.landed = f"{name}: {damage(path, mode, rng)}"
    trial.damaged_made += 1

    cold = str(vault.root / "cold-cache")
    plain, plain_doc = _check(trial, vault, False, password)
    rd, rd_doc = _check(trial, vault, True, password)
    cold_rd, cold_doc = _check(trial, vault, True, password, PHONEVAULT_CACHE_DIR=cold)
    warm_found = _found(plain, plain_doc, name) or _found(rd, rd_doc, name)
    found = warm_found or _found(cold_rd, cold_doc, name)
    trial.damaged_detected_plain += _found(plain, plain_doc, name)
    trial.damaged_detected += found
    if found and not warm_found:
        trial.problem(f"check with the warm cache says ok, a cold-cache check finds the damage: {_errors(cold_doc)}")
    if _fingerprint(vault.repo, path) != before:
        trial.problem("running check changed other objects of the damaged vault")

    fatal = name in ("config", dmap["opening_key"])
    if fatal and plain.code != 0:
        if len(plain.lines()) != 1:
            trial.problem(f"unrecoverable damage to {name}: not one clear error line: {plain.lines()[:4]}")
        if spec.operation == "only-key" or name == "config":
            trial.bytes_damaged += sum(world.snapshots[s].size for s in affected)
            return trial.result()
        password = SPARE_PASSWORD  # the other key still opens the vault: everything must be there
        affected = set()
        run, doc = _check(trial, vault, True, password)
        # Clean but for the damaged key file itself, which check names when its shape shows the damage.
        others = [e for e in (doc or {}).get("errors", []) if name not in e]
        if doc is None or others or (run.code != 0 and not doc.get("errors")):
            trial.problem(f"the spare key's password does not open a clean vault: {_errors(doc)}")
    exact = _exports(trial, world, vault, name, affected, found, password, spec.params["mode"])
    if name.startswith("packs/"):
        _named_by_check(trial, world, name, set(affected) - set(exact), rd_doc)
    _prune_after(trial, world, vault, name, password, exact)
    return trial.result()


def _named_by_check(trial: Trial, world: World, name: str, lost: set[str], doc: dict | None) -> None:
    """check --read-data names, for every snapshot the damaged pack cost files, at least one of those files (in
    its `damaged` list) — or, when the pack held the snapshot's root tree node, the snapshot itself (no tree, no
    names)."""
    named = {d.get("snapshot") for d in (doc or {}).get("damaged", []) if d.get("paths")}
    errors = " ".join(_errors(doc, 200))
    for sid in sorted(lost):
        root_lost = name.endswith(world.census["damage"]["roots"].get(sid, "-"))
        if sid not in named and not (root_lost and sid[:12] in errors):
            trial.problem(f"check --read-data names no file {world.snapshots[sid].label} loses to damaged {name[:22]}…")


def _prune_after(trial: Trial, world: World, vault: Vault, name: str, password: str, exact: list[str]) -> None:
    """A prune on the damaged vault (a nightly job would run one) may refuse, but must not make things worse:
    what exported before still exports, and the packs of a snapshot the damage hid stay, so repairing the damaged
    object (from a copy of the vault) still brings it back."""
    dmap = world.census["damage"]
    run = pv(trial, vault, "prune", "--grace", "0", password=password)
    if run.code != 0 and len(run.lines()) != 1:
        trial.problem(f"prune on a vault with damaged {name}: exit {run.code}, not one clear line: {run.lines()[:3]}")
    survivors = [world.snapshots[i] for i in exact]
    exports_exact(trial, vault, survivors, f"after a prune of the vault with damaged {name}", password=password)
    hidden = set(world.live["damage"]) - set(exact)
    for pack_name, sids in dmap["affects"].items():
        if pack_name.startswith("packs/") and pack_name != name and hidden & set(sids):
            if not (vault.repo / pack_name).exists():
                label = world.snapshots[sorted(hidden & set(sids))[0]].label
                trial.problem(f"prune deleted {pack_name[:22]}… of {label}, which damage to {name} only hid")
                break


def _errors(doc: dict | None, n: int = 3) -> list[str]:
    return (doc or {}).get("errors", [])[:n]


def _exports(
    trial: Trial, world: World, vault: Vault, name: str, affected: set[str], found: bool, password: str, mode: str
) -> list[str]:
    """Export every snapshot through the CLI and judge each outcome; the ids that exported bit-exact."""
    dmap = world.census["damage"]
    lost_unnoticed = []
    exact_ids = []
    for sid in world.live["damage"]:
        snap = world.snapshots[sid]
        run, digest = export(trial, vault, sid, password=password)
        # Judged by what it wrote: a bit-exact folder is an export, even when the command then exits 1 for the
        # damage it was warned about elsewhere in the vault (a damaged segment of another device, say).
        if digest is not None and not differences(digest, snap.files):
            exact_ids.append(sid)
            continue
        if run.code == 0:
            trial.problem(f"{snap.label} exports with exit 0 but differs: {differences(digest or {}, snap.files)}")
            trial.bytes_lost += snap.size
            continue
        if digest is not None and run.code == 3:  # the intact rest written, the damaged files named
            wrong = [p for p, d in digest.items() if snap.files.get(p) != d]
            unnamed = unnamed_paths(snap.files.keys() - digest.keys(), run.stderr.splitlines())
            if wrong or unnamed:
                trial.problem(
                    f"{snap.label}: a partial export (exit 3) wrote {wrong[:2]} wrong, left out {unnamed[:2]} unnamed"
                )
        elif digest is not None:
            trial.problem(
                f"{snap.label}: exit {run.code} with a folder that differs: {differences(digest, snap.files)}"
            )
        if len(run.lines()) != 1 and run.code != 3:
            trial.problem(f"{snap.label}: a failed export is not one clear line: {run.lines()[:4]}")
        if sid not in affected:
            trial.problem(f"{snap.label} no longer exports, and {name} holds nothing of it: {run.lines()[-1:]}")
            trial.bytes_lost += snap.size
            continue
        trial.bytes_damaged += snap.size
        if not found:
            lost_unnoticed.append(snap.label)
        root_lost = name.startswith(("packs/", "index/")) and name.endswith(dmap["roots"].get(sid, "-"))
        if run.code == 1 and name.startswith(("packs/", "index/")) and not root_lost:
            trial.problem(f"{snap.label}: export failed whole (exit 1) though its tree is readable: {run.lines()[-1:]}")
    now = live(trial, vault, password=password, strict=False)
    changed = now is not None and {s["id"] for s in now} != set(world.live["damage"])
    if found:
        return exact_ids
    if not lost_unnoticed and not changed:
        trial.damage_harmless += 1
    elif mode == "delete" and name in dmap["last_segments"]:
        what = f"{lost_unnoticed or 'the set of live snapshots changed'}"
        trial.note(f"undetectable by design: the log's last segment {name} is gone, and with it {what}")
    else:
        trial.problem(f"no check reports the damage to {name}, yet {lost_unnoticed or 'the live snapshots changed'}")
    return exact_ids
