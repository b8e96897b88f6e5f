"""benchmarks/suite.py's settling and deferred deletes: a file-creating step waits SETTLE seconds after the last
delete of a tree (ext4 without a journal searches past recently freed inodes), the time survives into the next run
of a chain, and a small tree is moved to the trash inside a case and deleted only at its end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import suite  # noqa: E402


@pytest.fixture
def short_settle(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(suite, "SETTLE", 0.3)
    monkeypatch.setattr(suite, "_deleted_at", 0.0)
    monkeypatch.setattr(suite, "WORK", None)
    return 0.3


def _tree(root: Path, nbytes: int = 1) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x" * nbytes)
    return root


def test_remove_deletes_the_tree_and_the_next_settle_waits_out_the_rest(tmp_path: Path, short_settle: float) -> None:
    suite.remove(_tree(tmp_path / "restore"))
    removed = time.time()
    assert not (tmp_path / "restore").exists()
    suite.settle()
    assert time.time() - removed >= short_settle * 0.99  # a deadline reached, not a speed


def test_only_a_real_delete_is_stamped(tmp_path: Path, short_settle: float) -> None:
    suite.remove(tmp_path / "never-made")  # nothing deleted: no stamp
    assert suite._deleted_at == 0.0
    suite.remove(tmp_path)  # a real delete stamps the time ...
    stamped = suite._deleted_at
    assert stamped > 0.0
    suite.settle()  # ... and the wait after it ends once SETTLE has passed since that stamp
    assert time.time() - stamped >= short_settle * 0.99


def test_settle_zero_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "SETTLE", 0.0)
    monkeypatch.setattr(suite, "WORK", None)
    (tmp_path / "t").mkdir()
    suite.remove(tmp_path / "t")
    calls: list[list[str]] = []
    monkeypatch.setattr(suite.subprocess, "run", lambda argv, **kw: calls.append(argv))
    suite.settle()
    assert calls == []  # no sync, no sleep


def test_a_small_tree_waits_in_the_trash_until_the_case_ends(tmp_path: Path, short_settle: float) -> None:
    work = tmp_path / "work"
    work.mkdir()
    suite.use(work)
    restore = _tree(work / "phonevault" / "restore")
    suite.remove(restore)
    assert not restore.exists()  # gone from where the next step writes ...
    assert suite._deleted_at == 0.0  # ... but no inode freed, so nothing to settle after
    (kept,) = (work / suite.TRASH).iterdir()
    assert (kept / "a" / "b" / "f").read_bytes() == b"x"
    suite.remove(_tree(work / "phonevault" / "restore"))  # the same name again: a second trash entry
    assert len(list((work / suite.TRASH).iterdir())) == 2
    suite.empty_trash()  # the case's end: deleted now, and stamped
    assert not (work / suite.TRASH).exists()
    assert suite._deleted_at > 0.0


def test_a_large_tree_is_deleted_at_once(tmp_path: Path, short_settle: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "DEFER_BYTES", 1000)
    work = tmp_path / "work"
    work.mkdir()
    suite.use(work)
    suite.remove(_tree(work / "source", nbytes=4096))  # the disk needs its room
    assert not (work / "source").exists()
    assert not (work / suite.TRASH).exists()
    assert suite._deleted_at > 0.0


def test_the_next_run_of_a_chain_settles_after_the_last_ones_delete(tmp_path: Path, short_settle: float) -> None:
    work = tmp_path / "work"
    work.mkdir()
    suite.use(work)
    suite.remove(_tree(work / "restore"))
    suite.empty_trash()
    stamped = suite._deleted_at
    suite._deleted_at, suite.WORK = 0.0, None  # a new process of the chain
    suite.use(work)
    assert suite._deleted_at == stamped
    suite.settle()
    assert time.time() - stamped >= short_settle * 0.99


def test_use_empties_a_trash_an_interrupted_run_left(tmp_path: Path, short_settle: float) -> None:
    work = tmp_path / "work"
    _tree(work / suite.TRASH / "0-restore")
    suite.use(work)
    assert not (work / suite.TRASH).exists()
    assert suite._deleted_at > 0.0
