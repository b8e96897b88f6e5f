"""What phonevault survives: crashes, faults, damage and concurrency, run on purpose and reported as figures.

    .venv/bin/python -m tests.harness [--full | --ci] [--seed N] [--out DIR] [--jobs N] [--only TEXT]

prints a table and writes `results.json` and `results.md` to DIR (default tests/harness/results/; its `work/`
holds the world and the scratch folder of every failed trial). `--full` (the default) runs ≥ 300 SIGKILLs and
every stop, fault, damage and race below in ≤ 40 min on 2 cores; `--ci` runs ~30 of them in a few minutes (and
tests/test_harness_ci.py runs it under pytest). A run is reproduced by its seed.

Every trial ends with the same verdict (verdict.py): `phonevault check --read-data --json` is ok (notes about
unreferenced leftovers allowed), every snapshot committed before the trial exports bit-exact (against digests
recorded when it was committed), re-running the interrupted operation succeeds, no output holds a traceback.

Rooms, one job each:
  world.py        phones, folders, emulators and the baseline vaults every trial copies
  vaults.py       a vault on disk, the real `phonevault` command run against it, folder digests
  probe.py        the child side: an audit hook and a byte counter that stop `phonevault` at a chosen point
  child.py        the harness side of a steered child: wait for lines, SIGSTOP/SIGCONT, release, kill
  verdict.py      the verdict
  crash.py        SIGKILL inside import, backup, forget, prune, rollback, key add/passwd; stops at each backend
                  write (FaultyBackend) in-process
  faults.py       every command on a failing backend (EIO, short and flipped reads, a full disk), in-process;
                  one real full disk (tmpfs in a private mount namespace)
  damage.py       each object kind flipped, truncated, deleted: what check detects, what is lost
  concurrency.py  two devices at once, two writers of one device, prune during a backup, two copies of a vault
  plan.py         which trials `--full` and `--ci` hold, drawn from the seed and the censuses
  known.py        gaps being closed by other work ("expected until …")
  records.py      TrialSpec, Trial, TrialResult
  report.py       figures, the table, results.json and results.md
  run.py          build, plan, run in worker processes, report

A failed trial is a bug in phonevault (or, if its problem starts with "harness:", in the harness): each one found
so far has a regression test in the tests/ file nearest its cause.
"""
