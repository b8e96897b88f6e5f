"""How the device backup's peak RSS grows with the number of files: `phonevault backup` from the emulator serving
a synthetic phone of N small plists (SyntheticPhone(seed, size, many_files=N)), each N one fresh vault.

    .venv/bin/python benchmarks/profile_readside.py --files 20000,80000 [--size 16MB] [--pythonpath DIR]

The emulator runs as its own process (its memory is the phone's, not counted); the backup runs as one child under
GNU time (measure.timed, warm cache). `--pythonpath` runs the client from another checkout (a directory holding
`phonevault/{cli,store,sync}`, e.g. symbolic links into a `git worktree` of the parent commit), so a change and
its parent are measured back to back on the same phones. Prints wall time, CPU seconds (user + sys) and peak RSS
per N and the slope of peak RSS in bytes per file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from device import announced  # noqa: E402
from measure import ensure_gnu_time, timed  # noqa: E402
from profile_files import parse_size, slope  # noqa: E402
from tools import VENV_BIN, Phonevault, base_env  # noqa: E402

HERE = Path(__file__).parent
START_TIMEOUT = 1800.0

# The emulator's server with a phone of many small files (`phonevault emulator serve` has no such option).
SERVE = """
import functools, sys
from pathlib import Path
from phonevault.sync.emulator import server
from phonevault.sync.emulator.phone import SyntheticPhone
server.SyntheticPhone = functools.partial(SyntheticPhone, many_files=int(sys.argv[2]))
server.serve(0, Path(sys.argv[1]), size=int(sys.argv[3]))
"""


def python(pythonpath: str | None) -> tuple[list[str], dict[str, str]]:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    return [str(VENV_BIN / "python")], env


def start_emulator(data: Path, n: int, size: int, log: Path) -> tuple[subprocess.Popen, str]:
    env = base_env(data.parent / "emulator-home")
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "python"), "-c", SERVE, str(data), str(n), str(size)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return proc, announced(proc, log, START_TIMEOUT)["USBMUXD_SOCKET_ADDRESS"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="20000,80000")
    ap.add_argument("--size", default="16MB", help="phone size besides the many small files")
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "readside")
    ap.add_argument("--pythonpath", default=None, help="run the client from this package directory")
    args = ap.parse_args()
    ensure_gnu_time()
    size = parse_size(args.size)
    argv0, extra = python(args.pythonpath)
    client = [*argv0, "-c", "import sys; from phonevault.cli.main import main; sys.argv[0] = 'phonevault'; main()"]
    points = []
    for n in (int(x) for x in args.files.split(",")):
        work = args.workdir / f"device-{n}"
        data = args.workdir / f"emulator-{n}"  # the phone's folder is kept between runs
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = work / "log.txt"
        emu, address = start_emulator(data, n, size, log)
        try:
            pv = Phonevault(work / "repo", work)
            env = pv.env | extra | {"USBMUXD_SOCKET_ADDRESS": address}
            subprocess.run([*client, "init"], env=env, check=True, capture_output=True)
            m = timed("device backup", [*client, "backup"], env=env, cold=False, log=log)
        finally:
            stop(emu)
        shutil.rmtree(work, ignore_errors=True)
        points.append((n, m.peak_rss_mb))
        print(
            f"{n:>8,} files  device backup {m.wall_s:6.1f} s {m.cpu_s:6.1f} CPU s {m.peak_rss_mb:6.0f} MB", flush=True
        )
    print(f"peak RSS bytes per file: {slope(points):,.0f}")


if __name__ == "__main__":
    main()
