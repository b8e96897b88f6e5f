"""A `phonevault` process the harness steers: started under the probe (probe.py), watched line by line, stopped,
continued, released or killed, and recorded in its trial like every other command.

Waiting is always on a condition with a deadline (a line on stderr, the process's exit), never a bare sleep; the
one deliberate delay is a timed kill's, which is how that kind of trial chooses its moment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .records import Trial
from .vaults import COMMAND_TIMEOUT_S, PASSWORD, PV, Vault, record

PROBE = str(Path(__file__).with_name("probe.py"))
POINT = re.compile(r"^PV-PROBE-POINT (\d+) (.*)$")


@dataclass(frozen=True, slots=True)
class Stop:
    """Where the probe stops the child: `at` is "event:N" or "bytes:B"; `then` "kill" or "pause"."""

    at: str
    then: str = "kill"
    match: tuple[str, ...] = ()


def place_of(point: str) -> str:
    """A probe point in words a table can group: `os.link events/`, `open packs/ (temp file)`, `read source`,
    `mid-chunking`."""
    if point.startswith("fed "):
        return "mid-chunking"
    event, _, path = point.partition(" ")
    for marker, area in (("/vault/", None), ("/cache/", "cache")):
        if marker in path:
            rest = path.split(marker, 1)[1]
            area = area or (rest.split("/", 1)[0] + ("/" if "/" in rest else ""))
            temp = " (temp file)" if path.rsplit("/", 1)[-1].startswith(".tmp-") else ""
            return f"{event} {area}{temp}"
    return f"{event} source"


class Child:
    def __init__(
        self,
        trial: Trial,
        vault: Vault,
        args: list[str],
        *,
        stop: Stop | None = None,
        watch: tuple[Path, ...] = (),
        count: Path | None = None,
        password: str = PASSWORD,
        **extra_env: str,
    ) -> None:
        self.trial = trial
        self.args = tuple(args)
        self.release_file = vault.tmp / f"release-{os.getpid()}-{id(self)}"
        if stop is None and count is None:
            cmd = [PV, *args]
        else:
            cmd = [sys.executable, PROBE]
            for w in (vault.repo, vault.cache, *watch):
                cmd += ["--watch", str(w)]
            if stop is not None:
                for m in stop.match:
                    cmd += ["--match", m]
                cmd += ["--at", stop.at, "--then", stop.then, "--release", str(self.release_file)]
            if count is not None:
                cmd += ["--count", str(count)]
            cmd += ["--", *args]
        self._lines: list[str] = []
        self._out: list[str] = []
        self._cond = threading.Condition()
        self._start = time.monotonic()
        self.p = subprocess.Popen(
            cmd,
            env=vault.env(password, **extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.p.stderr, self._lines), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stdout, self._out), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.point: str = ""  # what the probe reported when it reached its point
        self.code: int | None = None

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line)
                if into is self._lines and (m := POINT.match(line.strip())):
                    self.point = m.group(2)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = COMMAND_TIMEOUT_S) -> str | None:
        """The first stderr line matching `pattern` (re.search), waiting until it comes, the child exits, or the
        deadline passes (None then)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if rx.search(line):
                        return line
                seen = len(self._lines)
                if self.p.poll() is not None and not any(t.is_alive() for t in self._readers):
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.2))

    def wait_point(self, timeout: float = COMMAND_TIMEOUT_S) -> bool:
        return self.wait_for(r"^PV-PROBE-POINT ", timeout) is not None

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def release(self) -> None:
        """Let a paused probe go on (and the process, if it was SIGSTOPped)."""
        self.release_file.touch()
        self.signal(signal.SIGCONT)

    def wait(self, timeout: float = COMMAND_TIMEOUT_S) -> int:
        try:
            self.code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.code = self.p.wait()
            self.trial.problem(f"`phonevault {' '.join(self.args)}` did not finish in {timeout:.0f} s")
        for t in self._readers:
            t.join(10)
        err = "".join(ln for ln in self._lines if not POINT.match(ln.strip()))
        record(self.trial, self.args, self.code, "".join(self._out), err, time.monotonic() - self._start)
        return self.code

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._lines)

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self._out)
