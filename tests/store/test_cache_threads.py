"""The cache read from several threads at once (export's read-ahead, copy's readers, the pack writers): one thread
renewing its read transaction after a write must not end another thread's, whose LMDB error would have wiped the
whole cache as damaged. The interleaving that did it is forced here step by step, on a real LMDB."""

from __future__ import annotations

import sys
import threading

from phonevault.store.packs import DATA, BlobLocation


def _loc(n: int) -> BlobLocation:
    return BlobLocation(f"{n:064x}", n, 10, 10, DATA)


def test_a_write_and_a_read_on_one_thread_leave_another_threads_reads_working(repo) -> None:
    cache = repo.cache
    cache.add_index("index-a", {b"a" * 32: _loc(1)})
    step = [threading.Event() for _ in range(2)]
    seen: list[object] = []

    def other() -> None:
        seen.append(cache.lookup(b"a" * 32))  # begins this thread's read transaction
        step[0].set()
        step[1].wait(30)
        seen.append(cache.lookup(b"a" * 32))  # through a transaction begun before the main thread's write
        seen.append(cache.lookup(b"b" * 32))

    t = threading.Thread(target=other)
    t.start()
    assert step[0].wait(30)
    cache.add_index("index-b", {b"b" * 32: _loc(2)})  # a write: every thread renews at its next read
    assert cache.lookup(b"b" * 32) == _loc(2)  # the main thread renews its own transaction
    step[1].set()
    t.join(30)
    assert seen == [_loc(1), _loc(1), _loc(2)]
    assert cache.notes == []  # nothing was taken for damage and wiped
    assert cache.lookup(b"a" * 32) == _loc(1)


def test_threads_walking_the_index_while_another_writes_and_reads(repo) -> None:
    """Readers walk every index entry (index_plan's cursor) while the main thread writes and looks up: with one
    shared transaction, the main thread's renewal aborted it mid-walk, the walker's LMDB error wiped the cache."""
    cache = repo.cache
    for n in range(3000):
        cache.add_index(f"old-{n}", {bytes([n % 256, n // 256]) * 16: _loc(n)})
    names = [f"old-{n}" for n in range(3000)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def walker() -> None:
        try:
            while not stop.is_set():
                missing, _newer = cache.index_plan(names)  # the main thread's new indexes are "newer"
                assert missing == []
        except BaseException as e:  # reported below
            errors.append(e)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL over often, so walks and renewals interleave
    try:
        threads = [threading.Thread(target=walker) for _ in range(3)]
        for t in threads:
            t.start()
        for n in range(300):
            cache.add_index(f"new-{n}", {b"\xff" + bytes([n % 256, n // 256]) * 15 + b"\xff": _loc(n)})
            assert cache.lookup(b"\xff" + bytes([n % 256, n // 256]) * 15 + b"\xff") == _loc(n)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(switch)
    assert errors == []
    assert cache.notes == []  # nothing was taken for damage and wiped
