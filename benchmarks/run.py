"""phonevault against restic, borg, `cp -r` and `cat`, on synthetic phones of several sizes: the one command.

    .venv/bin/python benchmarks/run.py              # 1 GB + 6 GB + device path + many-files (300 000 files)
    .venv/bin/python benchmarks/run.py --quick      # a few-minute smoke run at 256 MB, to test the harness
    .venv/bin/python benchmarks/run.py --cases many-1000000,20GB --out scale   # some cases; merged into scale.*

Cases (`--cases`, comma-separated, run in the order given): a folder size (`1GB`, `6GB`, `20GB`: a synthetic phone
of that size), `many-N` (a `--many-files-size` phone with N small plists: the number-of-files series, whose
smallest point is the regular case of the same size), `device-SIZE` (a device backup from the emulator) and
`device-many-N` (the same from an emulated `--many-files-size` phone with N small plists). Without
`--cases` they come from --sizes, --with-20gb, --device-size and --many-files, as before.

Writes `benchmarks/results/STEM.{json,md}` (STEM = --out, default `results`; `quick` for --quick) and
`STEM`'s scaling plot (`scaling.png` for the default stem), and prints the Markdown. A run whose results file
already holds cases measured at the same commit adds its cases to them (a case measured again replaces the
older one), so a long benchmark can be run in pieces; every case records its own commit, date, load average
and machine. What each step measures and how: measure.py (timing, RSS, cold cache), suite.py (the steps and
their verification), device.py (the emulator path), report.py (tables, targets, plot).

Data lives under --workdir (git-ignored): a case's source under `data/phone-<size>-<files>/`, which
`dataset.py --prepare` can write ahead of time, deleted after the case unless --keep-data. Disk: each case's need
is checked before anything runs and the run refuses in one line when it does not fit (benchmarks/README.md,
"Disk"); a case that fits only without its source during the restores runs frugal (suite.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import measure
import suite
from dataset import (
    UnrealisticMedia,
    data_root,
    disk_usage,
    make_dataset,
    media_check,
    new_media_bytes,
)
from device import bench_device
from measure import StepFailed, drop_caches, ensure_gnu_time
from report import markdown, merge, plot
from suite import Source, references, run_tool
from tools import VENV_BIN, Borg, Phonevault, Restic, Tool, ensure_peer, tool_version

from phonevault.cli.sizes import parse_size

HERE = Path(__file__).resolve().parent
GB = 2**30
FROZEN = "PHONEVAULT_BENCH_COMMIT"  # set in the re-executed run: the commit whose code is measured
MEDIA_LIMIT = 256 * 2**20  # media bytes the compressibility check generates per case (in memory, ~2 s)
MARGIN = 2 * 10**9  # caches, logs, the frozen code, and the estimates' error
BLOCK = 4096


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    kind: str  # "size", "many" or "device"
    size: int
    many_files: int = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="", help="comma-separated cases: 1GB, 20GB, many-1000000, device-1GB, …")
    p.add_argument("--sizes", default="1GB,6GB", help="comma-separated folder sizes (default: 1GB,6GB)")
    p.add_argument("--with-20gb", action="store_true", help="add the 20 GB case (disk: see benchmarks/README.md)")
    p.add_argument("--many-files", default="300000", metavar="N[,N…]", help="files of the many-files cases (0: none)")
    p.add_argument("--many-files-size", default="1GB", help="phone size of the many-files cases (default: 1GB)")
    p.add_argument("--device-size", default="1GB", help="emulated phone for the device path ('0': skip)")
    p.add_argument("--peers", default="restic,borg", help="peers to run (default: restic,borg)")
    p.add_argument("--skip-peers", action="store_true", help="phonevault and the references only")
    p.add_argument("--skip-refs", action="store_true", help="no `cat` and `cp -r` references (minutes at 1M files)")
    p.add_argument("--workdir", type=Path, default=HERE / "work", help="generated data (default: benchmarks/work/)")
    p.add_argument("--keep-data", action="store_true", help="keep each case's source folder (at day 0) afterwards")
    p.add_argument("--frugal", action="store_true", help="delete the source during restores even when it fits")
    p.add_argument("--warm", action="store_true", help="never drop the page cache (others measure on this machine)")
    p.add_argument("--live-code", action="store_true", help="measure the working tree as it changes, not HEAD frozen")
    p.add_argument("--settle", type=float, default=suite.SETTLE, metavar="S",
                   help="seconds after a delete before a step that creates many files (suite.py, Settling; 0: off)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MB, 3 000 many-files, 256 MB device path")
    p.add_argument("--out", default="", help="results file stem under results/ (default: results, or quick)")
    return p.parse_args(argv)


def parse_case(token: str, many_size: int) -> Case:
    if token.startswith("device-many-"):
        return Case(token, "device", many_size, _count(token.removeprefix("device-many-")))
    if token.startswith("device-"):
        return Case(token, "device", parse_size(token.removeprefix("device-")))
    if token.startswith("many-"):
        return Case(token, "many", many_size, _count(token.removeprefix("many-")))
    return Case(token, "size", parse_size(token))


def _count(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def cases(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        tokens = ["256MB", "device-256MB", "many-3000"]
        many_size = 64 * 2**20
    elif args.cases:
        tokens = [t.strip() for t in args.cases.split(",") if t.strip()]
        many_size = parse_size(args.many_files_size)
    else:
        tokens = [s.strip() for s in args.sizes.split(",") if s.strip()]
        if args.with_20gb and "20GB" not in tokens:
            tokens.append("20GB")
        if args.device_size != "0":
            tokens.append(f"device-{args.device_size}")
        # the many-files cases last: they take longest, and the others are saved if they are interrupted
        tokens += [f"many-{n.strip()}" for n in args.many_files.split(",") if n.strip() and int(n) > 0]
        many_size = parse_size(args.many_files_size)
    return [parse_case(t, many_size) for t in tokens]


def make_tools(work: Path, peers: list[str]) -> list[Tool]:
    tools: list[Tool] = [Phonevault(work / "phonevault" / "repo", work / "phonevault")]
    if "restic" in peers:
        tools.append(Restic(work / "restic" / "repo", work / "restic"))
    if "borg" in peers:
        tools.append(Borg(work / "borg" / "repo", work / "borg"))
    return tools


# ------------------------------------------------------------------------------------------------ disk


def prepared(work: Path, case: Case) -> dict | None:
    """What `dataset.py --prepare` recorded for this case's source folder, if it is there."""
    marker = data_root(work, case.size, case.many_files) / "prepared.json"
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def source_disk(case: Case, prep: dict | None) -> tuple[int, int]:
    """(blocks on disk, apparent bytes) of a case's day-0 folder: measured when it was prepared, else estimated
    (the phone is within 10 % of its size, ~1 300 B per small plist, every file ends in a partly used 4 KiB
    block: a million plists take 5.8 GB of disk for 2 GB of bytes)."""
    if prep:
        return prep["disk_bytes"], prep["bytes"]
    files = case.many_files or (min(max(64, case.size // 32768), 60_000) + 3000)
    nbytes = int(1.1 * case.size) + case.many_files * 1300
    return nbytes + files * BLOCK, nbytes


def disk_need(case: Case, prep: dict | None) -> tuple[int, int]:
    """Free bytes the case needs (keeping its source, frugal), its prepared folder (if any) being on disk already.

    The peak is the source plus the larger of the `cp -r` copy and one tool's repository (about the folder's
    apparent size) plus its restore (the day-2 folder, ~4 % larger); frugal, the source is gone during restores.
    A device case holds the phone's folder, the vault and its export, then the phone's folder and pymobiledevice3's
    copy."""
    src, nbytes = source_disk(case, prep)
    repo, restore = int(1.05 * nbytes), int(1.04 * src)
    if case.kind == "device":
        keep = frugal = src + repo + restore
    else:
        keep = src + max(src, repo + restore)
        frugal = max(2 * src, src + repo, repo + restore)
    have = src if prep else 0
    return keep - have + MARGIN, frugal - have + MARGIN


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def plan_disk(work: Path, todo: list[Case], force_frugal: bool, keep_data: bool) -> dict[str, bool]:
    """{case label: frugal}; raise SystemExit with one line when a case cannot fit even frugal. Cases run in
    order, each deleting its source afterwards (unless --keep-data), so a prepared folder of an earlier case is
    free space for the later ones."""
    free = free_bytes(work)
    out = {}
    for case in todo:
        prep = prepared(work, case) if case.kind != "device" else None
        keep, frugal = disk_need(case, prep)
        if free < frugal:
            raise SystemExit(
                f"benchmarks/run.py: case {case.label} needs {frugal / 1e9:.1f} GB free under {work} "
                f"({free / 1e9:.1f} GB will be); free disk or run fewer cases (benchmarks/README.md, 'Disk')"
            )
        out[case.label] = force_frugal or free < keep
        if prep and not keep_data:
            free += prep["disk_bytes"]
    return out


# ------------------------------------------------------------------------------------------------ one case


def case_meta(case: Case) -> dict:
    """Who measured this case, when, on what, how loaded: recorded per case, because runs are merged."""
    return {"label": case.label, "kind": case.kind, "size": case.size, "many_files": case.many_files,
            "commit": git_commit(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "load_start": os.getloadavg(), "free_disk_start": free_bytes(HERE)}  # fmt: skip


def media_figures(ds) -> dict:
    """dataset.media_check on the case's phone: zstd -3 must not save more on its media than on a real phone's."""
    try:
        return {"ok": True, **media_check(ds.phone, 0, MEDIA_LIMIT)}
    except UnrealisticMedia as e:
        return {"ok": False, "error": str(e)}


def bench_case(case: Case, work: Path, peers: list[str], log: Path, frugal: bool, keep: bool, refs: bool) -> dict:
    out = case_meta(case)
    started = time.perf_counter()
    root = data_root(work, case.size, case.many_files)
    out["prepared"] = prepared(work, case)
    (root / "prepared.json").unlink(missing_ok=True)  # the folder is about to change; re-written if kept
    ds = make_dataset(root, case.size, case.many_files)
    start = time.perf_counter()
    ds.at_day(0)  # incremental over a prepared folder: only its metadata is written again
    out["generate_s"] = time.perf_counter() - start
    src = Source(ds, ds.photo(), frugal=frugal, verify_day0=refs)
    src.at(0)
    out |= {"bytes_day0": src.sizes[0], "files_day0": len(src.digests[0]), "photo": src.photo.domain_path,
            "frugal": frugal, "day2_new_media": new_media_bytes(ds.phone), "media": media_figures(ds)}  # fmt: skip
    print(f"[{case.label}] day-0 folder: {src.sizes[0] / 1e9:.2f} GB, {len(src.digests[0]):,} files, "
          f"written in {out['generate_s']:.0f} s{' (prepared)' if out['prepared'] else ''}"
          f"{', frugal' if frugal else ''}", flush=True)  # fmt: skip
    out["refs"] = references(src, work, log) if refs else {}
    out["tools"] = {}
    for tool in make_tools(work, peers):
        print(f"[{case.label}] {tool.name} …", flush=True)
        out["tools"][tool.name] = run_tool(tool, src, work / tool.name, log)
        if err := out["tools"][tool.name].get("error"):
            print(f"[{case.label}] {tool.name} failed: {err}", flush=True)
    if 2 not in src.sizes:
        src.at(2)
    out["bytes_day2"] = src.sizes[2]
    out["regenerate_s"] = src.regenerate_s
    if keep:
        src.at(0)
        nbytes, files, blocks = disk_usage(ds.folder)
        (root / "prepared.json").write_text(json.dumps({"size": case.size, "many_files": case.many_files,
            "generate_s": out["generate_s"], "bytes": nbytes, "files": files, "disk_bytes": blocks}) + "\n")  # fmt: skip
    else:
        suite.remove(root)
    suite.empty_trash()  # the case's deferred deletes (suite.py): the next case's first steps settle after them
    out["load_end"] = os.getloadavg()
    out["case_s"] = time.perf_counter() - started
    return out


def run_device(case: Case, work: Path, log: Path) -> dict:
    out = case_meta(case)
    size = str(case.size) if case.many_files else case.label.removeprefix("device-")
    print(f"[{case.label}] …", flush=True)
    started = time.perf_counter()
    try:
        out |= bench_device(work, size, log, case.many_files)
    except StepFailed as e:
        out["error"] = str(e)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the emulator's phone folder: as large as the case
    out |= {"device_size": size, "load_end": os.getloadavg(), "case_s": time.perf_counter() - started}
    return out


# ------------------------------------------------------------------------------------------------ the run


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "kernel": f"Linux {platform.release()}",
            "python": platform.python_version(), "host": platform.node()}  # fmt: skip


def git_commit() -> str:
    if commit := os.environ.get(FROZEN):
        return commit
    r = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return (r.stdout.strip() or "?") + " (live working tree)"


def freeze_and_reexec(work: Path) -> None:
    """Run again on a copy of HEAD's store/, sync/ and cli/ (first on PYTHONPATH, ahead of the editable install),
    so commits landing in the shared working tree during a long run do not change the code being measured."""
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    code = work / "code"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", "--prefix=phonevault/", commit, "store", "sync", "cli"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    env = os.environ | {FROZEN: commit, "PYTHONPATH": str(code)}
    print(f"measuring commit {commit} (a frozen copy in {code})", flush=True)
    os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)


def versions(peers: list[str]) -> dict[str, str]:
    out = {"phonevault": tool_version([str(VENV_BIN / "phonevault"), "--version"]).split()[-1]}
    if "restic" in peers:
        out["restic"] = tool_version(["restic", "version"]).split()[1]
    if "borg" in peers:
        out["borg"] = tool_version(["borg", "--version"]).split()[-1]
    return out


def available_peers(wanted: str, skip: bool, notes: list[str]) -> list[str]:
    if skip:
        notes.append("peers skipped (--skip-peers)")
        return []
    peers = []
    for peer in (p.strip() for p in wanted.split(",") if p.strip()):
        if peer not in ("restic", "borg"):
            raise SystemExit(f"benchmarks/run.py: unknown peer {peer!r} (restic, borg)")
        if why := ensure_peer(peer):
            notes.append(f"{peer} skipped: {why}")
            print(f"note: {peer} skipped: {why}", flush=True)
        else:
            peers.append(peer)
    return peers


def load_previous(path: Path, commit: str) -> dict | None:
    """The results file's earlier cases when they were measured at this commit; an older commit's file is kept
    beside it as STEM-<commit>.json and the run starts a new one."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if old.get("commit") == commit:
        return old
    aside = path.with_name(f"{path.stem}-{str(old.get('commit', 'unknown')).split()[0]}.json")
    path.rename(aside)
    print(f"note: {path.name} held commit {old.get('commit')}; kept as {aside.name}", flush=True)
    return None


def save(results: dict, out_dir: Path, stem: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (out_dir / f"{stem}.md").write_text(text + "\n")
    return text


def plot_name(stem: str) -> str:
    return "scaling.png" if stem == "results" else f"{stem}-scaling.png"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_gnu_time()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    todo = cases(args)
    frugal = plan_disk(
        work, todo, args.frugal, args.keep_data
    )  # refuses before anything is frozen, installed or written
    if not args.live_code and FROZEN not in os.environ:
        freeze_and_reexec(work)
    log = work / "run.log"
    notes: list[str] = []
    peers = available_peers(args.peers, args.skip_peers, notes)
    suite.SETTLE = args.settle
    suite.use(work)
    measure.WARM = args.warm
    cold = drop_caches()
    if args.warm:
        notes.append("--warm: the page cache was kept, every step ran warm")
    elif not cold:
        notes.append("the page cache could not be dropped: every step ran warm")
    stem = args.out or ("quick" if args.quick else "results")
    out_dir = HERE / "results"
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(peers),
        "cold": cold,
        "settle_s": args.settle,
        "notes": notes,
        "sizes": [],
        "devices": [],
    }
    if previous := load_previous(out_dir / f"{stem}.json", results["commit"]):
        results = merge([previous, results])
    for case in todo:
        if case.kind == "device":
            record = run_device(case, work / "device", log)
        else:
            record = bench_case(case, work, peers, log, frugal[case.label], args.keep_data, not args.skip_refs)
        record |= {"cold": cold, "versions": versions(peers), "command": results["command"]}
        results = merge([results, {**results, "sizes": [], "devices": [], record_key(record): [record]}])
        save(results, out_dir, stem)  # a partial table survives an interrupted run
    if why := plot(results, out_dir / plot_name(stem)):
        results["notes"].append(why)
    print(save(results, out_dir, stem))
    return 0


def record_key(record: dict) -> str:
    return "devices" if record["kind"] == "device" else "sizes"


if __name__ == "__main__":
    sys.exit(main())
