"""benchmarks/: merging split runs, the scaling tables' ratios, the disk plan's refusal, and a prepared folder
that a run's day-0 write keeps (real files, the real generator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import dataset  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
from suite import CHECK, FIRST, RESTORE, UNCHANGED  # noqa: E402


def _m(wall: float, rss: float) -> dict:
    return {"wall_s": wall, "cpu_s": wall, "peak_rss_mb": rss, "ok": True, "nbytes": 0, "mbps": None}


def _case(label: str, kind: str, size: int, files: int, rss: float, restic_rss: float, commit: str = "abc") -> dict:
    steps = {s: _m(10.0 * files / 1000, rss) for s in (FIRST, UNCHANGED, RESTORE, CHECK)}
    peer = {s: _m(5.0 * files / 1000, restic_rss) for s in (FIRST, UNCHANGED, RESTORE, CHECK)}
    return {"label": label, "kind": kind, "size": size, "many_files": files if kind == "many" else 0,
            "commit": commit, "date": "2026-11-26 00:00 UTC", "load_start": [1.0, 1.0, 1.0],
            "load_end": [1.0, 1.0, 1.0], "bytes_day0": size, "bytes_day2": size, "files_day0": files,
            "refs": {}, "tools": {"phonevault": {"steps": steps}, "restic": {"steps": peer}}}  # fmt: skip


def _run(commit: str, *cases: dict) -> dict:
    return {"date": "2026-11-26 00:00 UTC", "command": "benchmarks/run.py", "commit": commit, "cold": True,
            "notes": [], "sizes": list(cases), "devices": [],
            "machine": {"cpu": "x", "cores": 2, "ram_gb": 24, "kernel": "Linux", "python": "3.11"},
            "versions": {"phonevault": "0.1"}}  # fmt: skip


def test_split_runs_merge_into_one_table_with_flatness_and_restic_ratios() -> None:
    gb = 2**30
    first = _run("abc", _case("1GB", "size", gb, 33_000, 200, 100), _case("many-300000", "many", gb, 300_000, 220, 400))
    again = _case("many-300000", "many", gb, 300_000, 230, 400)
    second = _run("abc", again, _case("many-1000000", "many", gb, 1_000_000, 250, 500))
    merged = report.merge([first, second])
    assert [s["label"] for s in merged["sizes"]] == ["1GB", "many-300000", "many-1000000"]
    assert merged["sizes"][1] is again  # measured again: the later run's case replaces the earlier one
    assert [s["label"] for s in report.files_series(merged)] == ["1GB", "many-300000", "many-1000000"]
    flat = {t.what: t for case, t in report.targets(merged) if case == "files"}
    imp = flat["peak RSS of import flat, 1GB → many-1000000"]
    assert (imp.ratio, imp.verdict) == (1.25, "miss")
    vs = {t.what: t for case, t in report.targets(merged) if case == "many-300000"}
    assert vs["peak RSS of import vs restic"].ratio == pytest.approx(230 / 400)
    assert vs["import time vs restic"].verdict == "miss"  # 10 s a 1 000 files against restic's 5
    text = report.markdown(merged)
    assert "### Scaling: number of files" in text and "| 1.25 |" in text


def test_results_of_different_commits_are_not_merged() -> None:
    with pytest.raises(report.MixedCommits):
        report.merge([_run("abc"), _run("def")])


def test_pieces_of_commits_with_the_same_measured_code_merge(tmp_path: Path) -> None:
    """A commit that changed only docs between two pieces of a run does not split the run; one that changed code
    does. A real git repository, three commits."""

    def git(*args: str) -> str:
        env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
        return subprocess.run(["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True,
                              env=env).stdout.strip()  # fmt: skip

    git("init", "-q")
    for d in report.MEASURED:
        (tmp_path / d).mkdir()
        (tmp_path / d / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("a\n")
    git("add", "-A")
    git("commit", "-q", "-m", "code")
    code = git("rev-parse", "--short", "HEAD")
    (tmp_path / "README.md").write_text("b\n")
    git("commit", "-q", "-am", "docs only")
    docs = git("rev-parse", "--short", "HEAD")
    (tmp_path / "store" / "m.py").write_text("x = 2\n")
    git("commit", "-q", "-am", "code again")
    changed = git("rev-parse", "--short", "HEAD")
    assert report.same_code([code, docs], tmp_path)
    assert not report.same_code([docs, changed], tmp_path)
    assert not report.same_code([code, f"{code} (live working tree)"], tmp_path)


def test_a_case_that_cannot_fit_is_refused_in_one_line(tmp_path: Path) -> None:
    huge = run.parse_case("100000TB", 2**30)
    with pytest.raises(SystemExit) as e:
        run.plan_disk(tmp_path, [huge], force_frugal=False, keep_data=False)
    assert "case 100000TB needs" in str(e.value) and "\n" not in str(e.value)
    small = run.parse_case("many-3000", 2**20)
    assert run.plan_disk(tmp_path, [small], force_frugal=True, keep_data=False) == {"many-3000": True}


def test_a_prepared_folder_is_kept_by_the_runs_day0_write(tmp_path: Path) -> None:
    got = dataset.prepare(tmp_path, 4 * 2**20, 200)
    root = dataset.data_root(tmp_path, 4 * 2**20, 200)
    assert json.loads((root / "prepared.json").read_text()) == got and got["files"] >= 200
    ds = dataset.make_dataset(root, 4 * 2**20, 200)
    shard_files = [p for p in ds.folder.glob("??/*") if p.stat().st_size > 100_000]  # not the rewritten metadata
    media = max(shard_files, key=lambda p: p.stat().st_size)
    before = media.stat().st_ino, media.stat().st_mtime_ns
    ds.at_day(0)
    assert (media.stat().st_ino, media.stat().st_mtime_ns) == before
    assert dataset.disk_usage(ds.folder)[:2] == (got["bytes"], got["files"])


def test_folder_digest_by_shard_processes_equals_one_walk(tmp_path: Path) -> None:
    ds = dataset.make_dataset(tmp_path, 4 * 2**20, 300)
    folder = ds.at_day(0)
    (folder / "00" / "nested").mkdir()
    (folder / "00" / "nested" / "x").write_bytes(b"x")
    walked = {
        (Path(d) / n).relative_to(folder).as_posix(): dataset.file_digest(Path(d) / n)
        for d, _dirs, names in os.walk(folder)
        for n in names
    }
    assert dataset.folder_digest(folder) == walked and "00/nested/x" in walked


def test_a_tool_skipped_at_the_largest_case_is_compared_over_the_cases_it_ran() -> None:
    gb = 2**30
    big = _case("many-1000000", "many", gb, 1_000_000, 250, 0)
    del big["tools"]["restic"]  # that piece ran with --skip-peers
    merged = report.merge([_run("abc", _case("1GB", "size", gb, 33_000, 200, 100)),
                           _run("abc", _case("many-300000", "many", gb, 300_000, 220, 150), big)])  # fmt: skip
    rows = [ln for ln in report.series_table("files", report.files_series(merged), None) if "| import / backup |" in ln]
    assert "| 1.25 |" in rows[0]  # phonevault over the whole series: 250 / 200
    assert "| 1.50 (1GB → many-300000) |" in rows[1]  # restic over the cases it ran: 150 / 100


def _device(label: str, size: int, files: int, many: int, rss: float) -> dict:
    return {"label": label, "kind": "device", "size": size, "many_files": many, "phone_bytes": size,
            "phone_files": files, "commit": "abc", "date": "2026-11-27 00:00 UTC", "phonevault": _m(10.0, rss),
            "pymobiledevice3": _m(20.0, 50.0)}  # fmt: skip


def test_device_cases_are_flat_over_size_and_over_files_apart() -> None:
    gb = 2**30
    cases = [_device("device-many-300000", gb, 300_000, 300_000, 130), _device("device-6GB", 6 * gb, 62_000, 0, 110),
             _device("device-1GB", gb, 33_000, 0, 100), _device("device-2GB", 2 * gb, 40_000, 0, 105)]  # fmt: skip
    assert run.parse_case("device-many-300000", gb) == run.Case("device-many-300000", "device", gb, 300_000)
    assert run.parse_case("device-6GB", gb) == run.Case("device-6GB", "device", 6 * gb)
    results = _run("abc") | {"devices": cases}
    series = dict(report.device_series(results))
    assert [d["label"] for d in series["device size"]] == ["device-1GB", "device-2GB", "device-6GB"]
    assert [d["label"] for d in series["device files"]] == ["device-1GB", "device-many-300000"]
    flat = {case: t for case, t in report.targets(results) if case.startswith("device")}
    assert (flat["device size"].ratio, flat["device size"].verdict) == (1.1, "pass")
    assert (flat["device files"].ratio, flat["device files"].verdict) == (1.3, "miss")
    assert "device-many-300000 (1.07 GB, 300,000 files)" in report.markdown(results)
