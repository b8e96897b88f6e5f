"""The run: build the world, take the censuses, plan, run every trial in worker processes, report.

Workers are spawned (not forked: the parent has run emulator threads), each with its own emulators (world.Rig)
and its own scratch folder per trial under `<out>/work/trials/`, removed when the trial passes unless `--keep`.
A trial that crashes the harness itself is a failed trial whose problem starts with "harness:", so it is seen.
Memory and disk: one trial holds a copy of one baseline (~40 MB with its cache) and its exports, per job.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

from . import report
from .records import Trial, TrialResult, TrialSpec
from .world import HarnessError, Rig, World, build

DEFAULT_OUT = Path(__file__).with_name("results")

_world: World | None = None
_rig: Rig | None = None
_work: Path | None = None
_keep = False


def _init_worker(world_file: str, work: str, keep: bool) -> None:
    global _world, _rig, _work, _keep
    import logging

    logging.getLogger("pymobiledevice3").setLevel(logging.CRITICAL)  # in-process backups: the trial judges, not logs
    with open(world_file, "rb") as f:
        _world = pickle.load(f)
    _work = Path(work)
    _rig = Rig(_world, _work / f"rig-{multiprocessing.current_process().pid}")
    _keep = keep


def run_trial(index: int, spec: TrialSpec) -> TrialResult:
    from . import concurrency, crash, damage, faults

    where = _work / "trials" / f"{index:04d}-{spec.category}-{spec.operation}"
    shutil.rmtree(where, ignore_errors=True)
    try:
        match spec.category:
            case "crash":
                result = crash.run_kill(spec, _world, _rig, where)
            case "stop":
                result = crash.run_stop(spec, _world, _rig, where)
            case "fault" if spec.operation == "disk-full":
                result = faults.run_disk_full(spec, _world, _rig, where)
            case "fault":
                result = faults.run_fault(spec, _world, _rig, where)
            case "damage":
                result = damage.run_damage(spec, _world, where)
            case "concurrency":
                result = concurrency.run_concurrency(spec, _world, _rig, where)
            case _:
                raise ValueError(spec.category)
    except Exception:  # noqa: BLE001 - the harness's own failure, reported as such
        trial = Trial(spec)
        trial.problem(f"harness: {traceback.format_exc()[-1500:]}")
        result = trial.result()
    if result.status != "fail" and not _keep:
        shutil.rmtree(where, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="every trial (default)")
    mode.add_argument("--ci", action="store_const", dest="mode", const="ci", help="~30 trials in a few minutes")
    parser.add_argument("--seed", type=int, default=1, help="every draw of the run follows from it (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {DEFAULT_OUT}; with --ci or --only: its ci/ subfolder, so a "
                             "partial run never replaces the full run's report)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep every trial's scratch folder, not only failed ones")
    parser.add_argument("--only", default="", help="only trials whose label contains this text")
    parser.add_argument("--list", action="store_true", help="print the plan's trials and stop")
    args = parser.parse_args(argv)
    mode_name = args.mode or "full"
    if args.out is None:
        args.out = DEFAULT_OUT if mode_name == "full" and not args.only else DEFAULT_OUT / "ci"
    start = time.monotonic()
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    work = args.out.resolve() / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    from .plan import Censuses, ci_plan, full_plan

    print(f"building the world (seed {args.seed}) …", flush=True)
    try:
        world, rig = build(work / "world", args.seed, work / "rig-main")
        try:
            censuses = Censuses(world, rig, work / "census")
            specs = (full_plan if mode_name == "full" else ci_plan)(censuses, args.seed)
        finally:
            rig.close()
    except HarnessError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 2
    if args.only:
        specs = [s for s in specs if args.only in s.label]
    if args.list:
        for s in specs:
            print(s.label)
        return 0
    world_file = work / "world.pickle"
    world_file.write_bytes(pickle.dumps(world))
    print(f"{len(specs)} trials, {args.jobs} at a time (world and censuses took {time.monotonic() - start:.0f} s)")

    results: list[TrialResult | None] = [None] * len(specs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(str(world_file), str(work), args.keep)) as pool:  # fmt: skip
        futures = {pool.submit(run_trial, i, s): i for i, s in enumerate(specs)}
        for done, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            results[futures[fut]] = r
            if r.status == "fail":
                print(f"  FAIL {r.spec.label}: {' | '.join(r.problems)[:400]}", flush=True)
            if done % 10 == 0 or done == len(specs):
                fails = sum(x is not None and x.status == "fail" for x in results)
                print(f"  {done}/{len(specs)} trials, {fails} failed, {time.monotonic() - start:.0f} s", flush=True)
    final = [r for r in results if r is not None]
    meta = report.metadata(mode_name, args.seed, args.jobs, time.monotonic() - start, date)
    report.write(args.out, final, meta)
    for rig_dir in work.glob("rig-*"):
        shutil.rmtree(rig_dir, ignore_errors=True)
    print(report.text_table(final, meta))
    print(f"results: {args.out / 'results.md'}, {args.out / 'results.json'}")
    return 1 if any(r.status == "fail" for r in final) else 0
