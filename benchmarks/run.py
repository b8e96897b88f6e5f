"""phonevault against restic, borg, `cp -r` and `cat`, on synthetic phones of several sizes: the one command.

    .venv/bin/python benchmarks/run.py              # 1 GB + 6 GB + many-files (300 000 files) + device path
    .venv/bin/python benchmarks/run.py --quick      # ~2-minute smoke run at 256 MB, to test the harness

Writes `benchmarks/results/results.{json,md}` (`quick.*` for --quick) and `scaling.png` when matplotlib can be
installed, and prints the Markdown. What each step measures and how: measure.py (timing, RSS, cold cache),
suite.py (the steps and their verification), device.py (the emulator path), report.py (targets). Generated data
lives in --workdir (git-ignored) and is deleted size by size.
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

from dataset import make_dataset
from device import bench_device
from measure import StepFailed, drop_caches, ensure_gnu_time
from report import markdown, plot
from suite import Source, references, run_tool
from tools import VENV_BIN, Borg, Phonevault, Restic, Tool, ensure_peer, tool_version

from phonevault.cli.sizes import parse_size
from phonevault.sync.emulator.phone import MANY_FILES

HERE = Path(__file__).resolve().parent
GB = 2**30
FROZEN = "PHONEVAULT_BENCH_COMMIT"  # set in the re-executed run: the commit whose code is measured


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    size: int
    many_files: int = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1GB,6GB", help="comma-separated folder sizes (default: 1GB,6GB)")
    p.add_argument("--with-20gb", action="store_true", help="add the 20 GB case (needs ~70 GB free)")
    p.add_argument(
        "--many-files", type=int, default=MANY_FILES, metavar="N", help="files in the many-files case (0: skip)"
    )
    p.add_argument("--many-files-size", default="1GB", help="folder size of the many-files case")
    p.add_argument("--device-size", default="1GB", help="emulated phone for the device path ('0': skip)")
    p.add_argument("--skip-peers", action="store_true", help="phonevault and the references only")
    p.add_argument("--workdir", type=Path, default=HERE / "work", help="generated data (default: benchmarks/work/)")
    p.add_argument("--live-code", action="store_true", help="measure the working tree as it changes, not HEAD frozen")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 MB, 3 000 many-files, 256 MB device path")
    p.add_argument("--out", default="", help="results file stem under results/ (default: results, or quick)")
    return p.parse_args(argv)


def cases(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [Case("256MB", 256 * 2**20), Case("many-files (3,000)", 64 * 2**20, 3000)]
    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if args.with_20gb and "20GB" not in labels:
        labels.append("20GB")
    out = [Case(label, parse_size(label)) for label in labels]
    if args.many_files:
        out.append(Case(f"many-files ({args.many_files:,})", parse_size(args.many_files_size), args.many_files))
    return out


def make_tools(work: Path, peers: list[str]) -> list[Tool]:
    tools: list[Tool] = [Phonevault(work / "phonevault" / "repo", work / "phonevault")]
    if "restic" in peers:
        tools.append(Restic(work / "restic" / "repo", work / "restic"))
    if "borg" in peers:
        tools.append(Borg(work / "borg" / "repo", work / "borg"))
    return tools


def bench_case(case: Case, work: Path, peers: list[str], log: Path) -> dict:
    root = work / "src"
    shutil.rmtree(root, ignore_errors=True)
    ds = make_dataset(root, case.size, case.many_files)
    start = time.perf_counter()
    ds.at_day(0)
    generate_s = time.perf_counter() - start
    src = Source(ds, ds.photo())
    src.at(0)
    print(f"[{case.label}] day-0 folder: {src.sizes[0] / 1e9:.2f} GB, {len(src.digests[0]):,} files, "
          f"written in {generate_s:.0f} s", flush=True)  # fmt: skip
    out: dict = {"label": case.label, "size": case.size, "many_files": case.many_files, "generate_s": generate_s,
                 "bytes_day0": src.sizes[0], "files_day0": len(src.digests[0]), "photo": src.photo.domain_path}  # fmt: skip
    out["refs"] = references(src, work, log)
    out["tools"] = {}
    for tool in make_tools(work, peers):
        print(f"[{case.label}] {tool.name} …", flush=True)
        out["tools"][tool.name] = run_tool(tool, src, work / tool.name, log)
        if err := out["tools"][tool.name].get("error"):
            print(f"[{case.label}] {tool.name} failed: {err}", flush=True)
    src.at(2)
    out["bytes_day2"] = src.sizes[2]
    shutil.rmtree(root, ignore_errors=True)
    return out


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram, "kernel": f"Linux {platform.release()}",
            "python": platform.python_version()}  # fmt: skip


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


def available_peers(skip: bool, notes: list[str]) -> list[str]:
    if skip:
        notes.append("peers skipped (--skip-peers)")
        return []
    peers = []
    for peer in ("restic", "borg"):
        if why := ensure_peer(peer):
            notes.append(f"{peer} skipped: {why}")
            print(f"note: {peer} skipped: {why}", flush=True)
        else:
            peers.append(peer)
    return peers


def run_device(work: Path, size: str, log: Path) -> dict:
    print(f"[device] {size} …", flush=True)
    try:
        return {"size": size, **bench_device(work, size, log)}
    except StepFailed as e:
        return {"size": size, "error": str(e)}


def save(results: dict, out_dir: Path, stem: str) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (out_dir / f"{stem}.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_gnu_time()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.live_code and FROZEN not in os.environ:
        freeze_and_reexec(work)
    log = work / "run.log"
    notes: list[str] = []
    peers = available_peers(args.skip_peers, notes)
    cold = drop_caches()
    if not cold:
        notes.append("the page cache could not be dropped: every step ran warm")
    stem = args.out or ("quick" if args.quick else "results")
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(peers),
        "cold": cold,
        "notes": notes,
        "sizes": [],
    }
    regular = [c for c in cases(args) if not c.many_files]
    many = [c for c in cases(args) if c.many_files]
    for case in regular:
        results["sizes"].append(bench_case(case, work, peers, log))
        save(results, HERE / "results", stem)  # a partial table survives an interrupted run
    device_size = "256MB" if args.quick else args.device_size
    if device_size != "0":
        results["device"] = run_device(work / "device", device_size, log)
        save(results, HERE / "results", stem)
    for case in many:  # the longest case last: the others are on disk if it is interrupted
        results["sizes"].append(bench_case(case, work, peers, log))
        save(results, HERE / "results", stem)
    if not args.quick and not args.out and (why := plot(results, HERE / "results" / "scaling.png")):
        notes.append(why)
    print(save(results, HERE / "results", stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
