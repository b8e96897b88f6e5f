"""Retrying wrapper: any backend, with transient failures tried again after a bounded exponential backoff.

As kopia's retrying storage wrapper: the backend it wraps (S3) says what failed; this one decides whether to try
again. Transient: a `StorageUnavailable(transient=True)` (a reset connection, a timeout, throttling, a 5xx), or an
OSError whose errno says the same (ECONNRESET, ETIMEDOUT, EAGAIN, EBUSY). Anything else — a missing object, a lost
put_exclusive race, access denied, a full disk, a wrong address — is raised at once.

Backoff: attempt n (from 1) waits min(MAX_DELAY, BASE_DELAY × 2^(n-1)) × a random factor in [0.5, 1] (jitter, so
writers throttled together do not return together); at most ATTEMPTS tries, so a call gives up after at most
~sum of the delays (at most 11.3 s with the defaults) and raises the last error.

Every call is safe to repeat: put replaces with identical content, delete of a missing name is not an error, reads
have no effect. put_exclusive is the one subtle case: a try that failed in transit may have created the object
before the connection broke, so the next try meets ObjectExists for its own write. After a failed try, an
ObjectExists is therefore checked by reading the object back: the same bytes (a sealed object carries a random
nonce, so no other writer's are equal) mean this call created it, and it returns as a success; other bytes are
another writer's win, ObjectExists. `list` is gathered whole so that a failure halfway is retried from the start
rather than yielding names twice.

Counts, for reports: `calls` (calls made through the wrapper) and `retries` (tries repeated after a transient
failure). A process cannot show them otherwise (its output is the command's), so with PHONEVAULT_RETRY_LOG=FILE each
wrapper appends one JSON line to FILE when it is closed: {"pid", "location", "calls", "retries"} (one O_APPEND write
of < 4 KiB, so the lines of processes closing at once do not interleave). A process killed before it closes its
vault writes none. `benchmarks/s3_writers.py` sums them over the processes of a multi-writer run.
"""

from __future__ import annotations

import errno as errnos
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import ObjectExists, StorageUnavailable
from . import Backend

T = TypeVar("T")
ATTEMPTS = 8
BASE_DELAY = 0.1
MAX_DELAY = 5.0
RETRY_LOG = "PHONEVAULT_RETRY_LOG"
TRANSIENT_ERRNOS = frozenset({errnos.ECONNRESET, errnos.ETIMEDOUT, errnos.EAGAIN, errnos.EBUSY})

log = logging.getLogger("phonevault.store.retrying")


def is_transient(e: BaseException) -> bool:
    if isinstance(e, StorageUnavailable):
        return e.transient
    return isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS


class RetryingBackend:
    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = ATTEMPTS,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts counts from 1")
        self.inner = inner
        self.location = inner.location
        self.pack_writes = inner.pack_writes
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retries = 0  # tries repeated after a transient failure, over every call
        self.calls = 0  # calls made through the wrapper, each once however often it was tried
        self._reported = False

    def _retry(self, what: str, name: str, call: Callable[[], T], *, on_retry: Callable[[], None] | None = None) -> T:
        with self._lock:  # a lock per call is nothing beside the request it wraps
            self.calls += 1
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except Exception as e:
                if attempt == self.attempts or not is_transient(e):
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("%s %s: %s; trying again in %.2f s (%d/%d)", what, name, e, delay, attempt, self.attempts)
                with self._lock:
                    self.retries += 1
                if on_retry is not None:
                    on_retry()
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def get(self, name: str) -> bytes:
        return self._retry("get", name, lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._retry("get_range", name, lambda: self.inner.get_range(name, offset, length))

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._retry("put", name, lambda: self.inner.put(name, data))

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        failed_once = False

        def failed() -> None:
            nonlocal failed_once
            failed_once = True

        def attempt() -> None:
            try:
                self.inner.put_exclusive(name, data)
            except ObjectExists:
                # An earlier try may have created it before its answer was lost: ours if the bytes are ours.
                if failed_once and self.inner.get(name) == bytes(data):
                    return
                raise

        self._retry("put_exclusive", name, attempt, on_retry=failed)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return iter(self._retry("list", prefix, lambda: list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        self._retry("delete", name, lambda: self.inner.delete(name))

    def exists(self, name: str) -> bool:
        return self._retry("exists", name, lambda: self.inner.exists(name))

    def free_space(self) -> int | None:
        return self._retry("free_space", "", self.inner.free_space)

    def close(self) -> None:
        try:
            self._report()
        finally:
            self.inner.close()

    def _report(self) -> None:
        path = os.environ.get(RETRY_LOG)
        if not path or self._reported:
            return
        self._reported = True
        line = {"pid": os.getpid(), "location": self.location, "calls": self.calls, "retries": self.retries}
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
