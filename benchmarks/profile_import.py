"""First import of a folder of large files: wall, CPU (user and system apart), peak RSS and context switches of
`phonevault import` for one or more checkouts, run alternately, with `cp -r` of the same folder as the reference
from the same run.

    .venv/bin/python benchmarks/profile_import.py FOLDER [--pythonpath before=DIR] [--pythonpath after=DIR]
        [--rounds 3] [--cold] [--work DIR]

Each `--pythonpath LABEL=DIR` runs the client from DIR (a directory holding a `phonevault` package, e.g. a symlink to
a `git worktree` of an older commit); none runs this checkout. Every round runs each client once and `cp -r` once,
in that order, into fresh directories under the work directory, which are removed after each step (the disk holds
one copy at a time). Warm cache unless `--cold` (then the page cache is dropped before every step: it perturbs
anyone else on the machine). The table gives each step's median over the rounds; `--json` writes every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure import drop_caches, ensure_gnu_time, tree_bytes  # noqa: E402
from tools import PASSWORD, VENV_BIN  # noqa: E402

FIELDS = "%U %S %M %w %c"  # user s, system s, peak RSS KiB, voluntary and involuntary context switches


def run(cmd: list[str], env: dict[str, str], cold: bool, log: Path) -> dict[str, float]:
    if cold:
        drop_caches()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report, open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        start = time.perf_counter()
        rc = subprocess.run(
            ["/usr/bin/time", "-f", FIELDS, "-o", report.name, *cmd], env=env, stdout=out, stderr=out
        ).returncode
        wall = time.perf_counter() - start
        user, system, rss, vol, invol = (float(x) for x in report.read().split()[-5:])
    if rc != 0:
        raise SystemExit(f"`{' '.join(cmd)}` exited {rc} (see {log})")
    return {"wall": wall, "user": user, "sys": system, "cpu": user + system, "rss_mb": rss / 1024,
            "vcsw": vol, "ivcsw": invol}  # fmt: skip


def pv_env(work: Path, pythonpath: str | None) -> dict[str, str]:
    (work / "home").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work / "home"),
        "LANG": "C.UTF-8",
        "PHONEVAULT_REPO": str(work / "repo"),
        "PHONEVAULT_PASSWORD": PASSWORD,
        "PHONEVAULT_CACHE_DIR": str(work / "cache"),
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--pythonpath", action="append", default=[], help="LABEL=DIR (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--no-cp", action="store_true", help="skip the cp -r reference")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "profile-import")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ensure_gnu_time()
    clients = [tuple(p.split("=", 1)) for p in args.pythonpath] or [("this", None)]
    nbytes = tree_bytes(args.folder)
    log = args.work / "log.txt"
    args.work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for label, path in clients:
            case = args.work / "case"
            shutil.rmtree(case, ignore_errors=True)
            env = pv_env(case, path)
            subprocess.run([str(VENV_BIN / "phonevault"), "init"], env=env, check=True, capture_output=True)
            os.sync()
            runs.setdefault(label, []).append(
                run([str(VENV_BIN / "phonevault"), "import", str(args.folder)], env, args.cold, log)
            )
            shutil.rmtree(case, ignore_errors=True)
        if not args.no_cp:
            target = args.work / "cp"
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
            # cp does not fsync; `sync` after it is counted so the copy is on disk like the vault's packs.
            cmd = ["sh", "-c", f"cp -r '{args.folder}' '{target}' && sync"]
            runs.setdefault("cp -r + sync", []).append(run(cmd, dict(os.environ), args.cold, log))
            shutil.rmtree(target, ignore_errors=True)
    print(f"{args.folder}: {nbytes / 1e6:.0f} MB, {args.rounds} rounds, {'cold' if args.cold else 'warm'} cache")
    print(f"{'':16} {'wall s':>7} {'user s':>7} {'sys s':>7} {'cpu s':>7} {'RSS MB':>7} {'vcsw':>8} {'ivcsw':>7}")
    for label, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{label:16} {med['wall']:7.2f} {med['user']:7.2f} {med['sys']:7.2f} {med['cpu']:7.2f} "
              f"{med['rss_mb']:7.0f} {med['vcsw']:8.0f} {med['ivcsw']:7.0f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"folder": str(args.folder), "bytes": nbytes, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
