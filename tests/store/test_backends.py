"""One contract for every backend, and the wrappers' own behaviour.

The contract runs against each entry of WRITABLE (every call) and READABLE (the reading half only, for wrappers
that refuse writes). A new backend (S3) joins by adding one factory to WRITABLE; if other processes can open it by
its location, also to PROCESS_SHARED.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends import Backend, check_name, open_backend
from phonevault.store.backends.faulty import DiskFull, Fail, FaultyBackend, FlipBit, ShortRead
from phonevault.store.backends.local import LocalBackend
from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.backends.readonly import ReadOnlyBackend
from phonevault.store.errors import (
    CorruptObject,
    MissingObject,
    ObjectExists,
    PhonevaultError,
    ReadOnlyVault,
    UnsupportedBackend,
)
from phonevault.store.repository import Repository
from tests.seaweed import shared_seaweed

DEADLINE = 60.0  # seconds any wait in this file may take before it is a failure, never a timing assertion


@dataclass
class Store:
    backend: Backend  # the backend under test
    writer: Backend  # writes the objects a read test needs: the backend itself, or what a read-only one wraps
    reopen: Callable[[], Backend]  # another handle on the same objects


def _local(tmp_path: Path) -> Store:
    b = LocalBackend(tmp_path / "vault")
    return Store(b, b, lambda: LocalBackend(tmp_path / "vault"))


def _memory(_tmp_path: Path) -> Store:
    b = MemoryBackend()
    return Store(b, b, lambda: b)  # no per-handle state: the object is the store


def _faulty_local(tmp_path: Path) -> Store:
    b = FaultyBackend(LocalBackend(tmp_path / "vault"))  # no rules: must be indistinguishable from what it wraps
    return Store(b, b, lambda: FaultyBackend(LocalBackend(tmp_path / "vault")))


def _readonly_memory(_tmp_path: Path) -> Store:
    inner = MemoryBackend()
    return Store(ReadOnlyBackend(inner), inner, lambda: ReadOnlyBackend(inner))


def _s3(_tmp_path: Path) -> Store:
    location = shared_seaweed().location()  # a real SeaweedFS on loopback; each test its own prefix of the bucket
    b = open_backend(location)
    return Store(b, b, lambda: open_backend(location))


WRITABLE: dict[str, Callable[[Path], Store]] = {
    "local": _local,
    "memory": _memory,
    "faulty-local": _faulty_local,
    "s3": _s3,
}
READABLE = {**WRITABLE, "readonly-memory": _readonly_memory}
PROCESS_SHARED = {  # location another process opens
    "local": lambda tmp_path: str(tmp_path / "vault"),
    "s3": lambda _tmp_path: shared_seaweed().location(),
}


@pytest.fixture(params=sorted(WRITABLE))
def store(request, tmp_path: Path):
    s = WRITABLE[request.param](tmp_path)
    yield s
    s.backend.close()


@pytest.fixture(params=sorted(READABLE))
def readable(request, tmp_path: Path):
    s = READABLE[request.param](tmp_path)
    yield s
    s.backend.close()


def contents(b: Backend, prefix: str = "") -> dict[str, bytes]:
    return {name: b.get(name) for name, _ in b.list(prefix)}


# Names the repository never makes. Absolute and climbing names would escape a local root; the others are second
# spellings of a name ("a//b" is "a/b" on a disk, another key on S3) or a backend's own files (".tmp-*").
ESCAPING = ["", "/abs", "/", "..", "../x", "a/../b", "a/.."]
NON_CANONICAL = ["a//b", "./a", "a/./b", "a/", ".hidden", "a/.tmp-0123456789abcdef", "a\\b", "a\0b"]


# --- the reading half -----------------------------------------------------------------------------------------
def test_get_returns_exactly_what_was_put(readable: Store) -> None:
    objects = {"config": b"c" * 141, "keys/k1": b"", "packs/ab/ab01": os.urandom(5000), "events/d/0000000001": b"e"}
    for name, data in objects.items():
        readable.writer.put(name, data)
    for name, data in objects.items():
        assert readable.backend.get(name) == data
        assert readable.backend.exists(name)
    assert contents(readable.backend) == objects
    assert dict(readable.backend.list("")) == {n: len(d) for n, d in objects.items()}


def test_missing_names(readable: Store) -> None:
    readable.writer.put("packs/ab/ab01", b"x" * 10)
    for name in ("config", "packs/ab/ab02", "packs/ac/ab01", "nothing/at/all"):
        assert not readable.backend.exists(name)
        with pytest.raises(MissingObject):
            readable.backend.get(name)
        with pytest.raises(MissingObject):
            readable.backend.get_range(name, 0, 1)
    assert list(readable.backend.list("nothing/")) == []


def test_get_range_bounds(readable: Store) -> None:
    data = bytes(range(256)) * 4
    readable.writer.put("packs/00/p", data)
    b = readable.backend
    assert b.get_range("packs/00/p", 0, 10) == data[:10]
    assert b.get_range("packs/00/p", 500, 24) == data[500:524]
    assert b.get_range("packs/00/p", len(data) - 7, 7) == data[-7:]  # ends exactly at the end
    assert b.get_range("packs/00/p", 0, len(data)) == data
    assert b.get_range("packs/00/p", 3, 0) == b""
    # A range the object does not have is a short read: the index describes another object than the one stored.
    for offset, length in ((len(data) - 7, 8), (len(data), 1), (len(data) + 100, 5), (0, len(data) + 1)):
        with pytest.raises(MissingObject):
            b.get_range("packs/00/p", offset, length)


def test_get_range_refuses_negative_offsets_and_lengths(readable: Store) -> None:
    readable.writer.put("packs/00/p", b"x" * 100)
    for offset, length in ((-1, 5), (0, -1)):
        with pytest.raises(ValueError):
            readable.backend.get_range("packs/00/p", offset, length)


def test_ranges_over_more_objects_than_a_backend_keeps_open(readable: Store) -> None:
    """Interleaved ranged reads of 40 objects (local keeps 16 descriptors): every range is the oracle's slice."""
    rng = random.Random(7)
    objects = {f"packs/{i:02x}/{i:064x}": rng.randbytes(rng.randrange(1, 3000)) for i in range(40)}
    for name, data in objects.items():
        readable.writer.put(name, data)
    names = list(objects)
    for _ in range(600):
        name = rng.choice(names)
        size = len(objects[name])
        offset = rng.randrange(size)
        length = rng.randrange(size - offset + 1)
        assert readable.backend.get_range(name, offset, length) == objects[name][offset : offset + length]


def test_ranges_read_from_several_threads_at_once(readable: Store) -> None:
    """The contract allows calls from several threads. Four readers over more objects than local keeps open: a
    reader must never get another object's bytes, nor EBADF from a descriptor another thread closed."""
    objects = {f"packs/{i:02x}/p": bytes([i]) * 64 for i in range(24)}
    for name, data in objects.items():
        readable.writer.put(name, data)
    names = list(objects)
    wrong: list[str] = []

    def reader(k: int) -> None:
        for j in range(20_000):
            if wrong:
                return
            name = names[(j * 7 + k * 5) % len(names)]
            try:
                got = readable.backend.get_range(name, 8, 16)
            except OSError as e:
                wrong.append(f"{name}: {e!r}")
                return
            if got != objects[name][8:24]:
                wrong.append(f"{name}: got bytes of another object ({got[:1]!r})")
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


def test_list_prefixes_with_and_without_slash(readable: Store) -> None:
    objects = {
        "config": b"1",
        "idx": b"22",
        "index/aa": b"333",
        "index/ab": b"4444",
        "indexes/c": b"55555",
        "events/d1/0000000001": b"6",
        "events/d1/0000000002": b"77",
        "events/d10/0000000001": b"888",
        "packs/ab/abcd": b"9" * 9,
    }
    for name, data in objects.items():
        readable.writer.put(name, data)

    def listed(prefix: str) -> dict[str, int]:
        return dict(readable.backend.list(prefix))

    assert listed("") == {n: len(d) for n, d in objects.items()}
    assert set(listed("index/")) == {"index/aa", "index/ab"}
    assert set(listed("index")) == {"index/aa", "index/ab", "indexes/c"}  # a prefix of names, not of folders
    assert set(listed("i")) == {"idx", "index/aa", "index/ab", "indexes/c"}
    assert set(listed("index/a")) == {"index/aa", "index/ab"}
    assert set(listed("events/d1/")) == {"events/d1/0000000001", "events/d1/0000000002"}
    assert set(listed("events/d1")) == {"events/d1/0000000001", "events/d1/0000000002", "events/d10/0000000001"}
    assert set(listed("packs/")) == {"packs/ab/abcd"}  # nested below the prefix
    assert listed("index/aa") == {"index/aa": 3}  # a whole name is a prefix of itself
    assert listed("index/aa/") == {}
    assert listed("zzz/") == listed("zzz") == listed("config/") == {}


_component = st.text(alphabet="ab1", min_size=1, max_size=3)
_names = st.lists(st.lists(_component, min_size=1, max_size=3).map("/".join), max_size=10, unique=True)
_example = itertools.count()


@settings(max_examples=25)
@given(names=_names, cut=st.integers(0, 100))
def test_list_is_startswith_over_names(readable: Store, names: list[str], cut: int) -> None:
    """Property: list(p) is exactly the stored names that start with p, for every prefix of every stored name."""
    # No name may be both an object and a folder of others (see the contract): keep the first of each clash.
    kept: list[str] = []
    for n in names:
        if not any(n.startswith(k + "/") or k.startswith(n + "/") or k == n for k in kept):
            kept.append(n)
    ns = f"h{next(_example)}/"  # every example in its own namespace of the same store
    objects = {ns + n: n.encode() * (1 + len(n) % 3) for n in kept}
    for name, data in objects.items():
        readable.writer.put(name, data)
    prefixes = {ns, ns + "z", ns + "a/z/"} | {ns + n[: cut % (len(n) + 1)] for n in kept} | {ns + n for n in kept}
    prefixes |= {ns + n + "/" for n in kept}
    for p in prefixes:
        expected = {n: len(d) for n, d in objects.items() if n.startswith(p)}
        assert dict(readable.backend.list(p)) == expected, p


def test_escaping_names_are_refused_by_reads(readable: Store) -> None:
    for name in ESCAPING:
        for call in (readable.backend.get, readable.backend.exists, lambda n: readable.backend.get_range(n, 0, 1)):
            with pytest.raises(ValueError):
                call(name)


def test_non_canonical_names_are_refused_by_reads(readable: Store) -> None:
    """One spelling, one object: "a//b" and "a/" are not read as "a/b" and "a" (an object store would answer for
    other keys), and ".tmp-*" is not a name (local hides such files from list and sweeps them)."""
    readable.writer.put("a/b", b"x")
    readable.writer.put("a/c", b"y")
    for name in NON_CANONICAL:
        for call in (readable.backend.get, readable.backend.exists, lambda n: readable.backend.get_range(n, 0, 1)):
            with pytest.raises(ValueError):
                call(name)


def test_list_refuses_prefixes_outside_the_namespace(readable: Store) -> None:
    for prefix in ("../", "/", "/etc/", "..", "a/../../", "./", "a//"):
        with pytest.raises(ValueError):
            list(readable.backend.list(prefix))


def test_local_list_stays_inside_its_root(tmp_path: Path) -> None:
    """The local form of the refusal above: a sibling folder's files never appear as objects of this vault."""
    LocalBackend(tmp_path / "other").put("secret", b"not this vault's")
    b = LocalBackend(tmp_path / "vault")
    b.put("config", b"c")
    seen: list[str] = []
    try:
        seen = [name for name, _ in b.list("../")]
    except ValueError:
        pass
    assert not any("secret" in name for name in seen)


def test_local_list_skips_what_is_not_an_object(tmp_path: Path) -> None:
    """Files a disk gathers beside the objects (Finder's .DS_Store, a crashed writer's temporaries) are not
    objects: listing them would hand check and prune names that every other call refuses."""
    b = LocalBackend(tmp_path / "vault")
    b.put("packs/ab/ab01", b"pack")
    for junk in (".DS_Store", "packs/.DS_Store", "packs/ab/.tmp-0123456789abcdef", ".Trashes/501/x"):
        (tmp_path / "vault" / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "vault" / junk).write_bytes(b"junk")
    assert dict(b.list("")) == {"packs/ab/ab01": 4}
    assert dict(b.list("packs/")) == {"packs/ab/ab01": 4}


def test_free_space_is_a_count_or_unknown(readable: Store) -> None:
    free = readable.backend.free_space()
    assert free is None or (isinstance(free, int) and free >= 0)


# --- the writing half -----------------------------------------------------------------------------------------
def test_put_is_idempotent_and_replaces(store: Store) -> None:
    b = store.backend
    b.put("index/aa", b"same")
    b.put("index/aa", b"same")
    assert list(b.list("index/")) == [("index/aa", 4)]
    b.put("index/aa", b"other bytes")  # create-or-replace; the repository only does this with identical content
    assert b.get("index/aa") == b"other bytes"
    assert store.reopen().get("index/aa") == b"other bytes"


def test_put_keeps_its_own_copy(store: Store) -> None:
    buf = bytearray(b"a pack buffer the writer reuses")
    store.backend.put("packs/00/p", memoryview(buf))
    store.backend.put_exclusive("events/d/0000000001", memoryview(buf)[2:8])
    buf[:] = b"X" * len(buf)
    assert store.backend.get("packs/00/p") == b"a pack buffer the writer reuses"
    assert store.backend.get("events/d/0000000001") == b"pack b"


def test_put_exclusive_once(store: Store) -> None:
    b = store.backend
    b.put_exclusive("keys/k1", b"first")
    with pytest.raises(ObjectExists):
        b.put_exclusive("keys/k1", b"second")
    with pytest.raises(ObjectExists):
        store.reopen().put_exclusive("keys/k1", b"third")
    assert b.get("keys/k1") == b"first"
    assert list(b.list("keys/")) == [("keys/k1", 5)]  # the loser left nothing behind


def test_put_exclusive_race_between_threads(store: Store) -> None:
    """Eight writers, half of them on their own handle, race for each of 15 names: one wins, the others get
    ObjectExists, and the object holds the winner's bytes."""
    writers, rounds = 8, 15
    handles = [store.backend if i % 2 else store.reopen() for i in range(writers)]
    gate = threading.Barrier(writers, timeout=DEADLINE)
    outcome: dict[tuple[int, int], str] = {}

    def race(i: int) -> None:
        for r in range(rounds):
            gate.wait()
            try:
                handles[i].put_exclusive(f"events/race/{r:010d}", f"writer {i}".encode() * (i + 1))
                outcome[i, r] = "won"
            except ObjectExists:
                outcome[i, r] = "lost"
            except Exception as e:  # anything else is a failure of the contract; report it, do not hang the gate
                outcome[i, r] = repr(e)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads)
    for r in range(rounds):
        results = [outcome[i, r] for i in range(writers)]
        assert sorted(results) == ["lost"] * (writers - 1) + ["won"], results
        winner = results.index("won")
        assert store.backend.get(f"events/race/{r:010d}") == f"writer {winner}".encode() * (winner + 1)


_RACER = """
import sys
from phonevault.store.backends import open_backend
from phonevault.store.errors import ObjectExists
backend, me, rounds = open_backend(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
assert sys.stdin.readline() == "go\\n"
for r in range(rounds):
    name = f"events/race/{r:010d}"
    try:
        backend.put_exclusive(name, f"process {me}".encode() * (me + 1))
        print("won", name, flush=True)
    except ObjectExists:
        print("lost", name, flush=True)
"""


@pytest.mark.parametrize("kind", sorted(PROCESS_SHARED))
def test_put_exclusive_race_between_processes(kind: str, tmp_path: Path) -> None:
    """Four processes, each opening the location itself, released together and racing through the same 25 names:
    each name has exactly one winner and holds its bytes."""
    location, racers, rounds = PROCESS_SHARED[kind](tmp_path), 4, 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, location, str(i), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(racers)
    ]
    try:
        for p in procs:
            assert p.stdout.readline() == "ready\n", p.stderr.read()
        for p in procs:  # all are waiting on stdin: release them as close together as the pipes allow
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=DEADLINE) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0] * racers, [err for _, err in outputs]
    results = [dict(reversed(line.split(" ")) for line in out.splitlines()) for out, _ in outputs]
    b = open_backend(location)
    for r in range(rounds):
        name = f"events/race/{r:010d}"
        each = [res[name] for res in results]
        assert sorted(each) == ["lost"] * (racers - 1) + ["won"], (name, each)
        winner = each.index("won")
        assert b.get(name) == f"process {winner}".encode() * (winner + 1)


def test_delete(store: Store) -> None:
    b = store.backend
    b.put("packs/ab/ab01", b"data")
    assert b.get_range("packs/ab/ab01", 0, 2) == b"da"  # local now holds its descriptor
    b.delete("packs/ab/ab01")
    assert not b.exists("packs/ab/ab01")
    with pytest.raises(MissingObject):
        b.get("packs/ab/ab01")
    with pytest.raises(MissingObject):
        b.get_range("packs/ab/ab01", 0, 2)
    assert list(b.list("packs/")) == []
    b.delete("packs/ab/ab01")  # again: prune racing with itself
    b.delete("never/was")
    b.put_exclusive("packs/ab/ab01", b"back")  # the name is free again
    assert b.get("packs/ab/ab01") == b"back"


def test_a_folder_of_names_is_not_an_object(store: Store) -> None:
    """ "a" is only the start of "a/b", and "a/b/c" goes through an object: neither is an object, for any call."""
    b = store.backend
    b.put("a/b", b"xy")
    for name in ("a", "a/b/c"):
        assert not b.exists(name), name
        with pytest.raises(MissingObject):
            b.get(name)
        with pytest.raises(MissingObject):
            b.get_range(name, 0, 1)
        b.delete(name)
    assert contents(b) == {"a/b": b"xy"}


def test_escaping_names_are_refused_by_writes(store: Store) -> None:
    for name in ESCAPING:
        for call in (lambda n: store.backend.put(n, b"x"), lambda n: store.backend.put_exclusive(n, b"x")):
            with pytest.raises(ValueError):
                call(name)
        with pytest.raises(ValueError):
            store.backend.delete(name)
    assert list(store.backend.list("")) == []


def test_non_canonical_names_are_refused_by_writes(store: Store) -> None:
    store.backend.put("a/b", b"keep")
    for name in NON_CANONICAL:
        for call in (lambda n: store.backend.put(n, b"x"), lambda n: store.backend.put_exclusive(n, b"x")):
            with pytest.raises(ValueError):
                call(name)
        with pytest.raises(ValueError):
            store.backend.delete(name)
    assert contents(store.backend) == {"a/b": b"keep"}


# --- names and locations --------------------------------------------------------------------------------------
def test_check_name_accepts_every_name_the_repository_makes() -> None:
    for name in ("config", "keys/0a1b", "index/" + "f" * 64, "packs/ab/" + "a" * 64, "events/9a1b/0000000003"):
        assert check_name(name) == name
    assert check_name("prune/00000001700000000000-1a2b3c4d")


def test_open_backend(tmp_path: Path) -> None:
    assert isinstance(open_backend(str(tmp_path / "v")), LocalBackend)
    assert open_backend(str(tmp_path / "v")).location == str(tmp_path / "v")
    assert open_backend(f"file:{tmp_path}/v").location == str(tmp_path / "v")
    assert open_backend(f"file://{tmp_path}/a%20b").location == str(tmp_path / "a b")
    assert open_backend("file://localhost/srv/v").location == "/srv/v"
    assert open_backend("relative/vault").location == "relative/vault"
    assert open_backend("C:\\vault").location == "C:\\vault"  # a drive letter is not a scheme
    m1, m2 = open_backend("memory:"), open_backend("memory:")
    assert isinstance(m1, MemoryBackend)
    m1.put("config", b"x")
    assert not m2.exists("config")  # each memory: is its own store
    for location in ("s3:bucket/vault", "S3://bucket/vault", "sftp:host/path", "", "file:", "file://nas/v"):
        with pytest.raises(UnsupportedBackend):
            open_backend(location)
    with pytest.raises(UnsupportedBackend, match="names its endpoint"):
        open_backend("s3://bucket/vault")


# --- the faulty wrapper ---------------------------------------------------------------------------------------
def test_fail_the_nth_call() -> None:
    b = FaultyBackend(MemoryBackend(), [Fail("put", nth=2, errno=errno.EIO)])
    b.put("index/a", b"1")
    with pytest.raises(OSError) as e:
        b.put("index/b", b"2")
    assert e.value.errno == errno.EIO and e.value.filename == "index/b"
    b.put("index/c", b"3")
    assert set(contents(b)) == {"index/a", "index/c"}  # the failed put created nothing
    assert b.calls["put"] == 3 and b.calls["get"] == 2
    assert [(m, n) for _, m, n in b.fired] == [("put", "index/b")]


def test_fail_every_call_under_a_prefix() -> None:
    inner = MemoryBackend()
    inner.put("packs/00/p", b"pack")
    inner.put("config", b"cfg")
    b = FaultyBackend(inner, [Fail("get", errno=errno.EACCES, prefix="packs/")])
    for _ in range(3):
        with pytest.raises(PermissionError):
            b.get("packs/00/p")
    assert b.get("config") == b"cfg"
    assert b.get_range("packs/00/p", 0, 4) == b"pack"  # another method: untouched
    assert len(b.fired) == 3


def test_fail_after_put_exclusive_is_durable(tmp_path: Path) -> None:
    """The link happened, then the caller saw an error (a crash between the link and the reply): the object is
    there for everyone, and trying again meets ObjectExists."""
    b = FaultyBackend(LocalBackend(tmp_path / "v"), [Fail("put_exclusive", nth=1, errno=errno.EIO, after=True)])
    with pytest.raises(OSError) as e:
        b.put_exclusive("events/d/0000000000", b"segment")
    assert e.value.errno == errno.EIO
    assert LocalBackend(tmp_path / "v").get("events/d/0000000000") == b"segment"
    with pytest.raises(ObjectExists):
        b.put_exclusive("events/d/0000000000", b"segment")


def test_fail_before_put_exclusive_creates_nothing() -> None:
    b = FaultyBackend(MemoryBackend(), [Fail("put_exclusive", nth=1, errno=errno.EIO)])
    with pytest.raises(OSError):
        b.put_exclusive("events/d/0000000000", b"segment")
    assert not b.exists("events/d/0000000000")
    b.put_exclusive("events/d/0000000000", b"segment")


def test_short_reads() -> None:
    inner = MemoryBackend()
    inner.put("packs/00/p", bytes(range(100)))
    b = FaultyBackend(inner, [ShortRead("get", nth=1, drop=10), ShortRead("get_range", drop=1)])
    assert b.get("packs/00/p") == bytes(range(90))
    assert b.get("packs/00/p") == bytes(range(100))  # only the first get
    assert b.get_range("packs/00/p", 20, 5) == bytes(range(20, 24))
    assert b.get_range("packs/00/p", 0, 1) == b""


def test_flip_bit() -> None:
    data = os.urandom(64)
    inner = MemoryBackend()
    inner.put("packs/00/p", data)
    b = FaultyBackend(inner, [FlipBit("get_range", nth=2, bit=8 * 3 + 5)])
    assert b.get_range("packs/00/p", 0, 64) == data
    got = b.get_range("packs/00/p", 0, 64)
    diff = int.from_bytes(got, "big") ^ int.from_bytes(data, "big")
    assert diff == 1 << (64 * 8 - 1 - (8 * 3 + 5))  # exactly that bit, counted from the first byte's top bit
    assert b.get_range("packs/00/p", 0, 64) == data
    assert FaultyBackend(inner, [FlipBit(bit=8 * 64 + 1)]).get("packs/00/p") != data  # past the end: wraps


def test_disk_full_refuses_what_does_not_fit() -> None:
    b = FaultyBackend(MemoryBackend(), [DiskFull(capacity=100)])
    assert b.free_space() == 100
    b.put("packs/00/a", b"x" * 60)
    with pytest.raises(OSError) as e:
        b.put("packs/00/b", b"x" * 50)
    assert e.value.errno == errno.ENOSPC
    assert not b.exists("packs/00/b")  # nothing partial
    with pytest.raises(ObjectExists):
        b.put_exclusive("packs/00/a", b"y" * 10)  # a lost race writes nothing and takes no space
    b.put_exclusive("events/d/0000000000", b"x" * 40)  # exactly fills the disk
    assert b.free_space() == 0
    for write in (b.put, b.put_exclusive):
        with pytest.raises(OSError) as e:
            write("packs/00/c", b"x")
        assert e.value.errno == errno.ENOSPC
    assert set(contents(b)) == {"packs/00/a", "events/d/0000000000"}
    assert b.written == 100


def test_a_call_held_in_flight_by_the_before_hook() -> None:
    """A put_exclusive held before it reaches the store loses to a writer that overtakes it."""
    inner = MemoryBackend()
    entered, release = threading.Event(), threading.Event()

    def hold(method: str, name: str) -> None:
        if method == "put_exclusive":
            entered.set()
            assert release.wait(DEADLINE)

    slow = FaultyBackend(inner, before=hold)
    result: list[BaseException | None] = []

    def write() -> None:
        try:
            slow.put_exclusive("events/d/0000000000", b"slow")
            result.append(None)
        except ObjectExists as e:
            result.append(e)

    t = threading.Thread(target=write)
    t.start()
    assert entered.wait(DEADLINE)
    inner.put_exclusive("events/d/0000000000", b"fast")
    release.set()
    t.join(DEADLINE)
    assert isinstance(result[0], ObjectExists)
    assert inner.get("events/d/0000000000") == b"fast"


def test_fault_rules_are_checked() -> None:
    for rule in (ShortRead("put"), FlipBit("list"), Fail("rename"), Fail("get", nth=0), ShortRead(drop=0)):
        with pytest.raises(ValueError):
            FaultyBackend(MemoryBackend(), [rule])


def test_a_flipped_bit_in_the_vault_is_caught_as_corruption(tmp_path: Path) -> None:
    """The wrapper composes with the real repository: a bit flipped on the way from storage is an authenticated
    decryption failure (CorruptObject), and an I/O error is the OSError the CLI reports as such."""
    store = MemoryBackend()
    Repository.init(store, "pw", scrypt_n=2**10, cache_root=tmp_path / "c").close()
    with pytest.raises(CorruptObject):
        Repository.open(
            FaultyBackend(store, [FlipBit("get", prefix="config", bit=200)]), "pw", cache_root=tmp_path / "c"
        )
    with pytest.raises(OSError):
        Repository.open(FaultyBackend(store, [Fail("get", prefix="config")]), "pw", cache_root=tmp_path / "c")
    Repository.open(FaultyBackend(store), "pw", cache_root=tmp_path / "c").close()


# --- the read-only wrapper ------------------------------------------------------------------------------------
def test_readonly_refuses_every_write_before_it_reaches_the_store() -> None:
    inner = FaultyBackend(MemoryBackend())  # no rules: only to count what reaches it
    inner.put("config", b"c")
    b = ReadOnlyBackend(inner)
    calls_before = dict(inner.calls)
    for op, call in (
        ("write", lambda: b.put("packs/00/p", b"x")),
        ("create", lambda: b.put_exclusive("events/d/0000000000", b"x")),
        ("delete", lambda: b.delete("config")),
    ):
        with pytest.raises(ReadOnlyVault) as e:
            call()
        assert e.value.operation == op and e.value.location == "memory:"
        assert isinstance(e.value, PhonevaultError)  # one line and exit code 1 in the CLI
    assert dict(inner.calls) == calls_before
    assert contents(b) == {"config": b"c"}


def test_readonly_vault_opens_and_reads_but_cannot_append(tmp_path: Path) -> None:
    from phonevault.store.events import Exported

    store = MemoryBackend()
    Repository.init(store, "pw", scrypt_n=2**10, cache_root=tmp_path / "c").close()
    before = contents(store)
    with Repository.open(ReadOnlyBackend(store), "pw", cache_root=tmp_path / "c") as repo:
        assert repo.devices() == []
        with pytest.raises(ReadOnlyVault):
            repo.append(repo.device_key("udid"), [Exported(b"\0" * 16, 1, "/tmp/x")])
    assert contents(store) == before
