"""The harness's `--ci` subset under pytest: ~30 trials (kills inside every kind of operation, stops at backend
writes, faults, a real full disk, damage, races) must all pass — each a real phonevault run judged by the same
verdict as the full run (tests/harness/__init__.py). Run as a subprocess: the harness spawns its own workers
and emulators, and its results land in tmp_path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_ci_trial_passes(tmp_path):
    out = tmp_path / "harness"
    r = subprocess.run(
        [sys.executable, "-m", "tests.harness", "--ci", "--seed", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert (out / "results.json").exists(), f"the harness did not report (exit {r.returncode}):\n{r.stderr[-3000:]}"
    doc = json.loads((out / "results.json").read_text())
    failed = [f"{t['label']}: {' | '.join(t['problems'])}" for t in doc["trials"] if t["status"] == "fail"]
    assert not failed, "\n".join(failed)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    figures = doc["figures"]
    assert figures["trials"] >= 25 and figures["bytes_lost"] == 0, figures
    assert figures["kills_landed"] >= figures["kills"] - 2, figures  # kills land inside the operation
    assert figures["damaged_made"] >= 5 and figures["faults_injected"] >= 5, figures
