"""The cache read from several threads at once (export's read-ahead, copy's readers, the pack writers): one thread
renewing its read transaction after a write must not end another thread's, whose LMDB error would have wiped the
whole cache as damaged; and no lookup waits for another thread's write to commit. The interleavings are forced here
step by step, on a real LMDB."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from phonevault.store.cache import MAP_SIZE
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


_HOLD_WRITE = """
import sys, lmdb
env = lmdb.open(sys.argv[1], map_size=int(sys.argv[2]), max_dbs=8)
txn = env.begin(write=True)  # LMDB's writer lock, across processes: the cache's next write waits for it
print("held", flush=True)
sys.stdin.readline()
txn.abort()
"""


def test_lookups_and_trims_go_on_while_a_write_waits_to_commit(repo) -> None:
    """A write holds the cache's write lock until LMDB has committed it (an fsync, or here another process's write
    transaction, which makes the wait last as long as the test needs). Lookups and trims on other threads must not
    wait for it: they read the last committed state meanwhile, and the write's blobs once it is done."""
    cache = repo.cache
    cache.add_index("index-a", {b"a" * 32: _loc(1)})
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE, str(cache.path), str(MAP_SIZE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    writer = threading.Thread(target=cache.add_index, args=("index-b", {b"b" * 32: _loc(2)}))
    try:
        assert holder.stdout.readline() == "held\n"
        writer.start()
        deadline = time.monotonic() + 30
        while cache._lock.acquire(blocking=False):  # until the writer holds it, blocked in LMDB
            cache._lock.release()
            assert time.monotonic() < deadline, "the write never began"
            threading.Event().wait(0.001)
        seen: list[object] = []

        def read() -> None:  # a thread of its own: it must begin a read transaction while the write waits
            seen.extend([cache.lookup(b"a" * 32), cache.lookup(b"b" * 32)])
            cache.trim()
            seen.append("trimmed")

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(30)
        assert seen == [_loc(1), None, "trimmed"]  # answered while the write still waits: nothing of it yet
        assert writer.is_alive()
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(30)
        writer.join(30)
    assert cache.lookup(b"b" * 32) == _loc(2)  # the write went through once LMDB let it
    assert cache.notes == []
