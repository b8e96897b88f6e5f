"""Fault-injection wrapper: any backend, with the failures a real disk or network produces, declared up front.

    FaultyBackend(inner, [Fail("put", nth=3, errno=errno.EIO), FlipBit("get_range", bit=7), DiskFull(10_000)])

Rules (frozen dataclasses) say which call fails and how:
- `Fail(method, nth, errno, after=False)`: the call raises OSError(errno). Before it reaches the wrapped backend
  (nothing happened), or with `after=True` once it has returned: the effect is durable but the caller saw an
  error — a put_exclusive whose link happened when the machine died before the caller heard back.
- `ShortRead(method, nth, drop)`: get or get_range returns `drop` bytes fewer than it should.
- `FlipBit(method, nth, bit)`: get or get_range returns its bytes with one bit flipped.
- `DiskFull(capacity)`: put and put_exclusive raise OSError(ENOSPC), without creating the object, once the bytes
  they wrote would pass `capacity`. A write that still fits succeeds; deleting gives nothing back.
`nth` counts, from 1, the calls a rule matches (its method, and names starting with its `prefix`); None: every one.

`before(method, name)`, if given, runs before each call (a test blocks it on an Event to hold a call in flight).
`calls` counts every call per method, failed ones included; `fired` lists (rule, method, name) each time a rule
acted, so a test can tell a fault it injected from one that never happened. Thread-safe: counting and the disk
budget are under one lock; the wrapped backend is called outside it.
"""

from __future__ import annotations

import errno as errnos
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import Backend

METHODS = ("get", "get_range", "put", "put_exclusive", "list", "delete", "exists", "free_space", "close")
READS = ("get", "get_range")


@dataclass(frozen=True, slots=True)
class Fail:
    method: str
    nth: int | None = None
    errno: int = errnos.EIO
    after: bool = False
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ShortRead:
    method: str = "get"
    nth: int | None = None
    drop: int = 1
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class FlipBit:
    method: str = "get"
    nth: int | None = None
    bit: int = 0  # counted from the first byte returned, modulo the bits returned
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class DiskFull:
    capacity: int


Fault = Fail | ShortRead | FlipBit | DiskFull
Hook = Callable[[str, str], None]


def _check(rule: Fault) -> None:
    if isinstance(rule, DiskFull):
        if rule.capacity < 0:
            raise ValueError(f"{rule}: a negative capacity")
        return
    if rule.method not in (READS if isinstance(rule, ShortRead | FlipBit) else METHODS):
        raise ValueError(f"{rule}: {type(rule).__name__} cannot apply to {rule.method!r}")
    if rule.nth is not None and rule.nth < 1:
        raise ValueError(f"{rule}: nth counts from 1")
    if isinstance(rule, ShortRead) and rule.drop < 1:
        raise ValueError(f"{rule}: a short read drops at least one byte")


class FaultyBackend:
    def __init__(self, inner: Backend, rules: Sequence[Fault] = (), *, before: Hook | None = None) -> None:
        for rule in rules:
            _check(rule)
        self.inner = inner
        self.location = inner.location
        self.pack_writes = inner.pack_writes
        self.rules = tuple(rules)
        self.before = before
        self.calls: Counter[str] = Counter()
        self.fired: list[tuple[Fault, str, str]] = []
        self.written = 0  # bytes put and put_exclusive wrote, counted against DiskFull
        self._matched = [0] * len(self.rules)
        self._full = next((r for r in self.rules if isinstance(r, DiskFull)), None)
        self._lock = threading.Lock()

    # --- the machinery ----------------------------------------------------------------------------------------
    def _enter(self, method: str, name: str) -> list[Fault]:
        """Count the call; the rules that fire on it."""
        if self.before is not None:
            self.before(method, name)
        firing: list[Fault] = []
        with self._lock:
            self.calls[method] += 1
            for i, rule in enumerate(self.rules):
                if isinstance(rule, DiskFull) or rule.method != method or not name.startswith(rule.prefix):
                    continue
                self._matched[i] += 1
                if rule.nth is None or rule.nth == self._matched[i]:
                    firing.append(rule)
                    self.fired.append((rule, method, name))
        return firing

    @staticmethod
    def _fail(firing: list[Fault], name: str, *, after: bool) -> None:
        for rule in firing:
            if isinstance(rule, Fail) and rule.after == after:
                raise OSError(rule.errno, os.strerror(rule.errno), name)

    def _read(self, method: str, name: str, read: Callable[[], bytes]) -> bytes:
        firing = self._enter(method, name)
        self._fail(firing, name, after=False)
        data = read()
        self._fail(firing, name, after=True)
        for rule in firing:
            if isinstance(rule, ShortRead):
                data = data[: max(0, len(data) - rule.drop)]
            elif isinstance(rule, FlipBit) and data:
                bit = rule.bit % (len(data) * 8)
                flipped = bytearray(data)
                flipped[bit // 8] ^= 0x80 >> (bit % 8)
                data = bytes(flipped)
        return data

    def _write(self, method: str, name: str, data: bytes | memoryview, write: Callable[[], None]) -> None:
        firing = self._enter(method, name)
        self._fail(firing, name, after=False)
        size = memoryview(data).nbytes
        if self._full is not None:
            with self._lock:
                if self.written + size > self._full.capacity:
                    self.fired.append((self._full, method, name))
                    raise OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC), name)
                self.written += size  # reserved now, so two racing writers cannot both take the last bytes
        try:
            write()
        except BaseException:
            if self._full is not None:
                with self._lock:
                    self.written -= size  # nothing was created (the name was taken, the disk failed)
            raise
        self._fail(firing, name, after=True)

    def _other(self, method: str, name: str, call: Callable[[], object]) -> object:
        firing = self._enter(method, name)
        self._fail(firing, name, after=False)
        result = call()
        self._fail(firing, name, after=True)
        return result

    # --- the backend ------------------------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        return self._read("get", name, lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._read("get_range", name, lambda: self.inner.get_range(name, offset, length))

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._write("put", name, data, lambda: self.inner.put(name, data))

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        self._write("put_exclusive", name, data, lambda: self.inner.put_exclusive(name, data))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self._other("list", prefix, lambda: self.inner.list(prefix))  # type: ignore[return-value]

    def delete(self, name: str) -> None:
        self._other("delete", name, lambda: self.inner.delete(name))

    def exists(self, name: str) -> bool:
        return self._other("exists", name, lambda: self.inner.exists(name))  # type: ignore[return-value]

    def free_space(self) -> int | None:
        inner = self._other("free_space", "", self.inner.free_space)
        if self._full is None:
            return inner  # type: ignore[return-value]
        with self._lock:
            left = max(0, self._full.capacity - self.written)
        return left if inner is None else min(left, inner)  # type: ignore[call-overload]

    def close(self) -> None:
        self._other("close", "", self.inner.close)
