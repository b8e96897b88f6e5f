"""One dataset size, every tool: the sequence of measured steps and how each is verified.

Per size: write the synthetic phone's day-0 folder, hash it, time the references (`find … -exec cat {} +` to
/dev/null, and `cp -r`), then for each tool in turn, on a fresh repository:

1. first backup of the day-0 folder;
2. the same backup again, nothing changed;
3. the folder moved to day 2 (`write_backup(root, day=2)`), backed up; bytes added = repository size after minus
   before (apparent size of every file, as `du -sb`);
4. full restore of the latest snapshot, compared by hash with the day-2 folder;
5. single-file restore of one photo, compared by hash with the source file;
6. check reading every byte (`check --read-data`, `borg check --verify-data`).

Tools run one after another, never in parallel; each step starts from a cold page cache (see measure.py). The
folder goes back to day 0 before each tool (an incremental rewrite of what day 2 changed), and each tool's
repository and restores are deleted before the next, so the disk holds one source, one repository, one restore.

Frugal (`Source.frugal`, for a case whose source, repository and restore do not fit on the disk together): the
source folder is deleted once the day-2 backup is measured (restores are verified against the digests taken
before, never against the folder), and written again at day 0 before the next tool; the time that takes is
recorded (`Source.regenerate_s`), never inside a measured step. The disk then holds at most two of the three.

Settling. A step that creates many files (a first backup, a full restore, `cp -r`) waits, after a `sync`, until
SETTLE seconds have passed since the last delete of a tree (`remove`, `empty_trash`; the time is kept in the work
folder, so the next run.py of a chain waits too). On ext4 without a journal (this VM's disk) every file created
soon after a large delete walks the inode bitmap past the just-freed inodes (`recently_deleted` in
fs/ext4/ialloc.c: 60 s once their inode table block is written back, 360 s while it is dirty, and creating files
dirties it again): perf showed ~70 % of the machine there during an export written right after the previous tool's
restore was deleted, so the order of the tools decided part of their times. The wait is outside every measured step
and the same for every tool; `--settle 0` turns it off.

Deferred deletes. Because creating files dirties the inode table again, a wait alone does not cover a delete of many
small files (a 300 000-file restore). So a tree under DEFER_BYTES (a restore, a repository or the source of a
many-files case) is not deleted inside a case: `remove` renames it into the work folder's trash, which frees no
inode, and `empty_trash` deletes it all at the end of the case. A larger tree (the 6 GB and 20 GB cases' restores
and sources: few, large files) is deleted at once, as the disk needs its room.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from dataset import Dataset, Photo, compare, file_digest, file_list, find_dir, find_file, folder_digest
from measure import Measurement, StepFailed, timed, tree_bytes
from tools import Tool

SETTLE = 65.0  # seconds after a delete before a step that creates many files (see Settling); run.py --settle
DEFER_BYTES = 2 * 10**9  # a tree under this is moved to the trash, not deleted, until the case ends (see Deferred)
WORK: Path | None = None  # run.py's work folder: the trash and the last delete's time live there (`use`)
TRASH, STAMP = ".trash", ".last-delete"  # under WORK
_deleted_at = 0.0  # time.time() of the last delete of a tree (this run's, or the stamp a previous run left)


def use(work: Path) -> None:
    """Keep the trash and the time of the last delete under `work`; a trash an interrupted run left is emptied."""
    global WORK, _deleted_at
    WORK = work
    with suppress(OSError, ValueError):
        _deleted_at = float((work / STAMP).read_text())
    empty_trash()


def _stamp() -> None:
    global _deleted_at
    _deleted_at = time.time()
    if WORK is not None:
        (WORK / STAMP).write_text(f"{_deleted_at}\n")


def remove(path: Path) -> None:
    """Delete a tree (a restore, a repository, a copy, a frugal source), or, under DEFER_BYTES with a work folder in
    `use`, move it into the trash until `empty_trash` (see Deferred deletes)."""
    if not path.exists():
        return
    if WORK is not None and tree_bytes(path) < DEFER_BYTES:
        trash = WORK / TRASH
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{len(list(trash.iterdir()))}-{path.name}")
        return
    shutil.rmtree(path, ignore_errors=True)
    _stamp()


def empty_trash() -> None:
    """Delete what `remove` deferred (at the end of a case), and stamp the time for `settle`."""
    if WORK is not None and (trash := WORK / TRASH).exists():
        shutil.rmtree(trash, ignore_errors=True)
        _stamp()


def settle() -> None:
    """Before a step that creates many files: wait until SETTLE seconds after the last delete (see Settling)."""
    left = SETTLE - (time.time() - _deleted_at)
    if SETTLE > 0 and left > 0:
        subprocess.run(["sync"], check=False)
        time.sleep(max(0.0, SETTLE - (time.time() - _deleted_at)))


FIRST, UNCHANGED, DAY2 = "first backup", "unchanged backup", "day-2 backup"
RESTORE, ONE, CHECK = "full restore", "single file", "check --read-data"
STEPS = (FIRST, UNCHANGED, DAY2, RESTORE, ONE, CHECK)


@dataclass(slots=True)
class Source:
    """The dataset plus what verification needs, computed once per size."""

    ds: Dataset
    photo: Photo
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    frugal: bool = False
    regenerate_s: list[float] = field(default_factory=list)  # writing a deleted source again (frugal)
    verify_day0: bool = True  # only the `cp -r` reference checks a copy of day 0; without it, day 0 is only counted

    def at(self, day: int) -> Path:
        gone = not self.ds.folder.is_dir()
        start = time.perf_counter()
        folder = self.ds.at_day(day)
        if gone and self.digests:
            self.regenerate_s.append(round(time.perf_counter() - start, 1))
        if day not in self.digests:
            self.digests[day] = folder_digest(folder) if day or self.verify_day0 else file_list(folder)
            self.sizes[day] = tree_bytes(folder)
        return folder

    def drop(self) -> None:
        """Delete the source folder to make room (frugal); the next `at` writes it again."""
        remove(self.ds.folder)
        self.ds.day = -1


def references(src: Source, work: Path, log: Path) -> dict[str, dict]:
    """`cat` of every file to /dev/null and `cp -r` of the folder: what reading and copying the bytes costs."""
    folder = src.at(0)
    nbytes = src.sizes[0]
    cat = timed("read (cat)", ["sh", "-c", 'find "$1" -type f -exec cat {} + > /dev/null', "sh", folder],
                nbytes=nbytes, log=log)  # fmt: skip
    copy = work / "cp"
    remove(copy)
    settle()
    cp = timed("copy (cp -r)", ["cp", "-r", folder, copy], nbytes=nbytes, log=log)
    _verify(cp, src.digests[0], copy)
    remove(copy)
    return {"cat": cat.to_json(), "cp": cp.to_json()}


def run_tool(tool: Tool, src: Source, work: Path, log: Path) -> dict:
    """The six steps for one tool; a failing step ends the tool's sequence and is reported, the run goes on."""
    remove(work)
    work.mkdir(parents=True)
    steps: dict[str, dict] = {}
    out: dict = {"steps": steps}
    try:
        _sequence(tool, src, work, log, steps, out)
    except (StepFailed, subprocess.CalledProcessError, OSError) as e:
        out["error"] = str(e)
    finally:
        remove(work)
    return out


def _sequence(tool: Tool, src: Source, work: Path, log: Path, steps: dict[str, dict], out: dict) -> None:
    def step(name: str, cmd, nbytes: int = 0) -> Measurement:
        if name in (FIRST, RESTORE):
            settle()
        m = timed(name, cmd.argv, env=tool.env, cwd=cmd.cwd, nbytes=nbytes, log=log)
        steps[name] = m.to_json()
        return m

    _run(tool, tool.init(), log)
    folder = src.at(0)
    step(FIRST, tool.backup(folder), src.sizes[0])
    out["repo_after_first"] = tree_bytes(tool.repo)
    step(UNCHANGED, tool.backup(folder))
    before = tree_bytes(tool.repo)
    folder = src.at(2)
    step(DAY2, tool.backup(folder))
    out["repo_after_day2"] = tree_bytes(tool.repo)
    out["day2_added"] = out["repo_after_day2"] - before
    if src.frugal:
        src.drop()

    target = work / "restore"
    m = step(RESTORE, tool.restore(target), src.sizes[2])
    _verify(m, src.digests[2], find_dir(target, src.ds.phone.udid))
    steps[RESTORE] = m.to_json()
    remove(target)

    target = work / "one"
    m = step(ONE, tool.restore_one(src.photo, target))
    # phonevault extracts under the photo's real name, the peers under its fileID.
    names = (src.photo.domain_path.rsplit("/", 1)[-1], src.photo.backup_path.rsplit("/", 1)[-1])
    got = next((p for n in names if (p := find_file(target, n))), None)
    expected = src.digests[2].get(src.photo.backup_path.split("/", 1)[1])
    m.ok = got is not None and file_digest(got) == expected
    m.note = "" if m.ok else f"extracted photo missing or different ({got})"
    steps[ONE] = m.to_json()
    remove(target)

    step(CHECK, tool.check(), out["repo_after_day2"])


def _run(tool: Tool, cmd, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, cmd.argv))}\n")
        f.flush()
        subprocess.run(list(map(str, cmd.argv)), env=tool.env, cwd=cmd.cwd, stdout=f, stderr=f, check=True)


def _verify(m: Measurement, expected: dict[str, str], folder: Path | None) -> None:
    problem = compare(expected, folder_digest(folder)) if folder and folder.is_dir() else "restored folder not found"
    m.ok, m.note = not problem, problem
