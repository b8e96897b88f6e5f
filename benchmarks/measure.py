"""Measuring one step: a child process's wall time, CPU seconds and peak RSS, from a cold page cache.

How. Every measured command runs under GNU time (`/usr/bin/time -f '%U %S %M' -o FILE cmd…`), which reports the
rusage that wait4 returns for its child: user + system CPU seconds of the child and of every descendant it waited
for (so `find -exec cat` counts its cats), and the largest resident set of any of them, in KiB. Wall time is
measured here with `time.perf_counter` around the whole run (GNU time's own %e has 10 ms resolution).

Peak RSS of a process tree. GNU time's %M is the largest resident set of any *one* process, so a tool that works in
two processes at once (phonevault's import reads small files in a child) would show only the larger. A sampler
therefore sums the proportional set size (Pss, /proc/<pid>/smaps_rollup: each shared page split between the
processes that map it, so pages a forked child shares with its parent count once) over the command's whole process
tree every SAMPLE_S seconds, and a step's peak RSS is the larger of that sum's peak and %M. A process's Pss is never
above its RSS, so for a one-process tool %M stands. The sampler also keeps the peak of the sum's anonymous part
(`peak_anon_mb`: heap and private mappings, without mapped files and shared libraries, whose Pss moves with what
else maps them).

Cold cache. Before each step `sync; echo 3 > /proc/sys/vm/drop_caches` writes dirty pages back and empties the page
cache, so a step reads its input from disk. If that is not permitted (not root, a container), steps run warm and
every measurement says so.

A step's throughput is the bytes of the backup folder it moved (read, stored, restored) over its wall time, in
MB/s with MB = 10^6 bytes. Steps whose cost does not scale with bytes (an unchanged re-import, one file) carry no
throughput.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

GNU_TIME = "/usr/bin/time"
SAMPLE_S = 0.05


class StepFailed(Exception):
    """A measured command exited non-zero (or its result did not verify)."""


@dataclass(slots=True)
class Measurement:
    """One step of one tool. `ok` is False when the command failed or its output did not verify."""

    step: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    nbytes: int = 0
    cold: bool = True
    ok: bool = True
    note: str = ""
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def mbps(self) -> float | None:
        return self.nbytes / 1e6 / self.wall_s if self.nbytes and self.wall_s > 0 else None

    def to_json(self) -> dict:
        return {**asdict(self), "mbps": self.mbps}


WARM = False  # benchmarks/run.py --warm: never drop the page cache (a machine others are measuring on)


def drop_caches() -> bool:
    """Write back and drop the page cache; True if the kernel let us (never under `WARM`)."""
    if WARM:
        return False
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process now running (from /proc/<pid>/stat)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the name may hold spaces and parentheses
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_pss_kib(root: int) -> tuple[int, int]:
    """The sums of Pss and of its anonymous part (Pss_Anon: heap, stacks, private mappings; not the files and shared
    libraries mapped) over every descendant of `root` (GNU time, the measurer), in KiB (0 once they have ended)."""
    kids, total, anon = _children(), 0, 0
    todo = list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
            elif line.startswith("Pss_Anon:"):
                anon += int(line.split()[1])
    return total, anon


class TreeRss:
    """Samples the summed Pss of a process tree on a thread until stopped; `peak_kib` is the largest sum seen, and
    `peak_anon_kib` the largest sum of its anonymous part (its own peak, not necessarily at the same moment)."""

    def __init__(self, root: int) -> None:
        self.root, self.peak_kib, self.peak_anon_kib = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            pss, anon = tree_pss_kib(self.root)
            self.peak_kib, self.peak_anon_kib = max(self.peak_kib, pss), max(self.peak_anon_kib, anon)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def ensure_gnu_time() -> None:
    """GNU time is the rusage reporter; Debian ships it as the `time` package."""
    if Path(GNU_TIME).exists():
        return
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "time"], check=False, capture_output=True)
    if not Path(GNU_TIME).exists():
        raise SystemExit("benchmarks need GNU time at /usr/bin/time (apt-get install time)")


def timed(
    step: str,
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    nbytes: int = 0,
    cold: bool = True,
    log: Path | None = None,
) -> Measurement:
    """Run `cmd` once under GNU time, from a cold cache if `cold`; raise StepFailed on a non-zero exit.

    The command's stdout and stderr go to `log` (appended) so a failure can be read afterwards."""
    was_cold = drop_caches() if cold else False
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        full = [GNU_TIME, "-f", "%U %S %M", "-o", report.name, *map(str, cmd)]
        with open(log or os.devnull, "a") as out:
            out.write(f"\n$ {' '.join(map(str, cmd))}\n")
            out.flush()
            start = time.perf_counter()
            proc = subprocess.Popen(full, env=env, cwd=cwd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            sampler = TreeRss(proc.pid)
            rc = proc.wait()
            wall = time.perf_counter() - start
            tree_kib = sampler.stop()
        fields = report.read().split()
    user, system, rss_kib = (float(x) for x in fields[-3:]) if len(fields) >= 3 else (0.0, 0.0, 0.0)
    m = Measurement(step, wall, user + system, max(rss_kib, tree_kib) / 1024, nbytes, was_cold)
    m.extra["largest_process_rss_mb"] = round(rss_kib / 1024, 1)
    # The memory the command itself allocated, without the files and libraries it maps, whose share of a page
    # depends on what else maps it: the figure to compare when peak RSS moves a few MB.
    m.extra["peak_anon_mb"] = round(sampler.peak_anon_kib / 1024, 1)
    m.extra["system_s"] = round(system, 2)  # the kernel's share of cpu_s (file system, page faults, locks)
    if rc != 0:
        raise StepFailed(f"{step}: `{' '.join(map(str, cmd))}` exited {rc} (see {log})")
    return m


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(apparent bytes, files, bytes of the blocks they occupy) of every regular file under path."""
    nbytes = files = blocks = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            nbytes += st.st_size
            blocks += st.st_blocks * 512
            files += 1
    return nbytes, files, blocks


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under path (what `du -sb` reports, minus directory entries)."""
    return disk_usage(path)[0]
