"""How peak RSS and time grow with the number of files: phonevault import, export and check --read-data on
synthetic phones of N small files, with restic's backup of the same folder as the reference from the same run.

    .venv/bin/python benchmarks/profile_files.py --files 20000,60000,120000 [--size 64MB] [--no-restic]

For each N: `SyntheticPhone(seed=7, size, many_files=N)` is written to the work directory, then each step runs as
one child process under GNU time (measure.timed, warm cache: this is a profile, not the benchmark). The slope of
peak RSS against N (bytes per file, least squares) is printed per step, with the table, and written to
`results/profile_files.json`. The folders are kept between runs (`--keep`), so a before/after comparison of a code
change measures the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dataset import make_dataset  # noqa: E402
from measure import Measurement, StepFailed, ensure_gnu_time, timed, tree_bytes  # noqa: E402
from tools import Phonevault, Restic  # noqa: E402

HERE = Path(__file__).parent


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * mult)
    return int(text)


def folder_for(work: Path, n: int, size: int) -> tuple[Path, int]:
    """The day-0 folder of the N-file phone (written once, kept for later runs) and its bytes."""
    root = work / f"data-{n}-{size}"
    ds = make_dataset(root, size, many_files=n)
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        ds.at_day(0)
        done.write_text("ok\n")
    return ds.folder, tree_bytes(ds.folder)


def run_case(work: Path, folder: Path, nbytes: int, restic: bool) -> dict[str, Measurement]:
    out: dict[str, Measurement] = {}
    case = work / "run"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    log = case / "log.txt"
    pv = Phonevault(case / "pv-repo", case / "pv")
    timed("init", pv.init().argv, env=pv.env, cold=False, log=log)
    out["import"] = timed("import", pv.backup(folder).argv, env=pv.env, nbytes=nbytes, cold=False, log=log)
    out["reimport"] = timed("reimport", pv.backup(folder).argv, env=pv.env, cold=False, log=log)
    target = case / "export"
    out["export"] = timed("export", pv.restore(target).argv, env=pv.env, nbytes=nbytes, cold=False, log=log)
    shutil.rmtree(target, ignore_errors=True)
    out["check"] = timed("check", pv.check().argv, env=pv.env, nbytes=nbytes, cold=False, log=log)
    if restic:
        r = Restic(case / "restic-repo", case / "restic")
        c = r.init()
        timed("restic init", c.argv, env=r.env, cwd=c.cwd, cold=False, log=log)
        c = r.backup(folder)
        out["restic"] = timed("restic backup", c.argv, env=r.env, cwd=c.cwd, nbytes=nbytes, cold=False, log=log)
    shutil.rmtree(case, ignore_errors=True)
    return out


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares bytes per file of peak RSS (MB) against N."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var * 1e6 if var else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="20000,60000,120000")
    ap.add_argument("--size", default="64MB", help="phone size besides the many small files")
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "profile")
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the commit)")
    args = ap.parse_args()
    ensure_gnu_time()
    size = parse_size(args.size)
    restic = not args.no_restic and shutil.which("restic") is not None
    rows = []
    for n in (int(x) for x in args.files.split(",")):
        folder, nbytes = folder_for(args.workdir, n, size)
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        try:
            got = run_case(args.workdir, folder, nbytes, restic)
        except StepFailed as e:
            raise SystemExit(str(e)) from None
        rows.append({"n": n, "files": files, "bytes": nbytes, **{k: m.to_json() for k, m in got.items()}})
        cells = "  ".join(f"{k} {m.wall_s:6.1f} s {m.peak_rss_mb:6.0f} MB" for k, m in got.items())
        print(f"{files:>8,} files  {cells}", flush=True)
    steps = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    slopes = {k: slope([(r["files"], r[k]["peak_rss_mb"]) for r in rows]) for k in steps}
    print("peak RSS bytes per file: " + ", ".join(f"{k} {v:,.0f}" for k, v in slopes.items()))
    res = HERE / "results" / "profile_files.json"
    runs = json.loads(res.read_text()) if res.exists() else []
    runs.append({"label": args.label, "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
                 "rss_bytes_per_file": slopes})  # fmt: skip
    res.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
