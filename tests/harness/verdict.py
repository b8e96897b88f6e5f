"""The verdict every trial ends with, and the checks it is made of.

After a crash, a fault, damage or a race, as a user would find the vault:
1. `phonevault check --read-data --json` is ok. Notes (an interrupted writer's unreferenced pack, a dead writer's
   marker) are allowed and kept in the trial's notes.
2. Every snapshot committed before the trial exports bit-exact: equal to the digest recorded when it was
   committed. A snapshot that does not is lost, and its bytes count in `bytes_lost` (which must stay 0). These
   exports go through the library in the harness's process (`export_snapshot`, what `phonevault export` runs),
   which saves an interpreter start and a key derivation per snapshot; damage trials, which judge the error line
   a user reads, export through the CLI.
3. Re-running the interrupted operation succeeds (each room does this, since only it knows the operation).
4. No output of any command contains "Traceback" (vaults.record checks every command as it ends).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from phonevault.store.backends.local import LocalBackend
from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository
from phonevault.sync.export import export_snapshot

from .records import Trial
from .vaults import PASSWORD, Digest, Run, Vault, differences, folder_digest, pv
from .world import SnapDigest


def as_json(trial: Trial, run: Run, what: str) -> object | None:
    try:
        return json.loads(run.stdout)
    except ValueError:
        trial.problem(f"{what}: exit {run.code}, no JSON on stdout: {run.stderr.strip()[-300:]}")
        return None


def check_clean(trial: Trial, vault: Vault, when: str, *, read_data: bool = True, password: str = PASSWORD) -> bool:
    args = ["check", "--read-data", "--json"] if read_data else ["check", "--json"]
    run = pv(trial, vault, *args, password=password)
    doc = as_json(trial, run, f"`{' '.join(args)}` {when}")
    if not isinstance(doc, dict):
        return False
    if run.code != 0 or not doc.get("ok"):
        trial.problem(f"`{' '.join(args)}` {when}: exit {run.code}, errors {doc.get('errors', [])[:3]}")
        return False
    for n in doc.get("notes", []):
        trial.note(f"check {when}: {n}")
    return True


def live(trial: Trial, vault: Vault, *, password: str = PASSWORD, strict: bool = True, **env: str) -> list[dict] | None:
    """The live snapshots as `snapshots --json` lists them. `strict=False` accepts exit 1 with the list printed
    (warnings about damage the vault holds, which damage trials expect)."""
    run = pv(trial, vault, "snapshots", "--json", password=password, **env)
    try:
        doc = json.loads(run.stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, list) or (strict and run.code != 0):
        trial.problem(f"`snapshots --json`: exit {run.code}: {run.stderr.strip()[-300:]}")
        return None
    return doc


def export(
    trial: Trial, vault: Vault, snap_id: str, *, password: str = PASSWORD, **env: str
) -> tuple[Run, dict | None]:
    """Export one snapshot into a fresh folder; the run and the digest of what it wrote (None: nothing)."""
    dest = vault.tmp / f"export-{snap_id[:12]}-{len(trial.commands)}"
    run = pv(trial, vault, "export", snap_id, "--to", str(dest), password=password, **env)
    written = [p for p in dest.iterdir() if not p.name.startswith(".")] if dest.exists() else []
    digest = folder_digest(written[0]) if len(written) == 1 else None
    shutil.rmtree(dest, ignore_errors=True)
    return run, digest


def library_exports(
    trial: Trial, vault: Vault, snap_ids: list[str], *, password: str = PASSWORD, cache: Path | None = None
) -> dict[str, Digest | str]:
    """Export each snapshot through the library: its digest, or why it could not be exported (one line)."""
    out: dict[str, Digest | str] = {}
    try:
        repo = Repository.open(LocalBackend(vault.repo), password, cache_root=cache or vault.cache)
    except (PhonevaultError, OSError) as e:
        return {i: f"the vault does not open: {e}" for i in snap_ids}
    try:
        for sid in snap_ids:
            dest = vault.tmp / f"lib-export-{sid[:12]}-{len(trial.commands)}"
            try:
                found = [(v, s) for v in repo.devices() for s in v.live() if s.hex == sid]
                if not found:
                    out[sid] = "no such live snapshot"
                    continue
                result = export_snapshot(repo, found[0][0], found[0][1], dest)
                missing = [*result.problems, *getattr(result, "damaged", [])]  # exit 3 in the CLI
                out[sid] = f"partial export: {missing[:2]}" if missing else folder_digest(result.path)
            except (PhonevaultError, OSError) as e:
                out[sid] = f"{type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001 - untyped: `phonevault export` would print a traceback
                trial.problem(f"export of {sid[:8]} raised {type(e).__name__} (a traceback in the CLI): {e}")
                out[sid] = f"{type(e).__name__}: {e}"
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        repo.close()
    return out


def exports_exact(
    trial: Trial, vault: Vault, snaps: list[SnapDigest], when: str, *, password: str = PASSWORD, **kw
) -> bool:
    """Each snapshot exports bit-exact, or the trial has a problem and its bytes count as lost."""
    ok = True
    for snap, got in zip(snaps, library_exports(trial, vault, [s.id for s in snaps], password=password, **kw).values(),
                         strict=True):  # fmt: skip
        if isinstance(got, dict) and not (diff := differences(got, snap.files)):
            continue
        ok = False
        trial.bytes_lost += snap.size
        if isinstance(got, dict):
            trial.problem(f"{snap.label} ({snap.id[:8]}) exports without error but differs {when}: {diff}")
        else:
            trial.problem(f"{snap.label} ({snap.id[:8]}) no longer exports {when}: {got[:300]}")
    return ok


def verdict(trial: Trial, vault: Vault, snaps: list[SnapDigest], when: str, *, password: str = PASSWORD) -> bool:
    """Steps 1 and 2 of the verdict; True if both held."""
    ok = check_clean(trial, vault, when, password=password)
    return exports_exact(trial, vault, snaps, when, password=password) and ok


def opening_password(trial: Trial, vault: Vault, candidates: tuple[str, ...]) -> str | None:
    """The first of `candidates` that opens the vault (a key operation may have been cut short)."""
    for pw in candidates:
        run = pv(trial, vault, "key", "list", "--json", password=pw)
        if run.code == 0:
            return pw
        if run.code != 12:
            trial.problem(f"`key list` fails with exit {run.code}, not a wrong password: {run.lines()[-1:]}")
    trial.problem("no password opens the vault any more")
    return None
