"""benchmarks/suite.py's settling: a file-creating step waits SETTLE seconds after the suite's last delete (ext4
without a journal searches past inodes freed within ~60 s), and only then; the wait never falls inside a step."""

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
    return 0.3


def test_remove_deletes_the_tree_and_the_next_settle_waits_out_the_rest(tmp_path: Path, short_settle: float) -> None:
    tree = tmp_path / "restore" / "a" / "b"
    tree.mkdir(parents=True)
    (tree / "f").write_bytes(b"x")
    suite.remove(tmp_path / "restore")
    removed = time.monotonic()
    assert not (tmp_path / "restore").exists()
    suite.settle()
    assert time.monotonic() - removed >= short_settle * 0.99  # a deadline reached, not a speed


def test_only_a_real_delete_is_stamped(tmp_path: Path, short_settle: float) -> None:
    suite.remove(tmp_path / "never-made")  # nothing deleted: no stamp
    assert suite._deleted_at == 0.0
    suite.remove(tmp_path)  # a real delete stamps the time ...
    stamped = suite._deleted_at
    assert stamped > 0.0
    suite.settle()  # ... and the wait after it ends once SETTLE has passed since that stamp
    assert time.monotonic() - stamped >= short_settle * 0.99


def test_settle_zero_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "SETTLE", 0.0)
    (tmp_path / "t").mkdir()
    suite.remove(tmp_path / "t")
    calls: list[list[str]] = []
    monkeypatch.setattr(suite.subprocess, "run", lambda argv, **kw: calls.append(argv))
    suite.settle()
    assert calls == []  # no sync, no sleep
