"""The real `phonevault serve` in a subprocess, for the CLI and browser tests: started on port 0, its URL read from
its stdout (waited for with a deadline), stopped by its own pid."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

START_DEADLINE = 120.0  # a loaded 2-core machine starts Python, opens the vault, binds


class Server:
    def __init__(self, env: dict[str, str], *args: str) -> None:
        exe = Path(sys.executable).with_name("phonevault")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--port", "0", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._found = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._found.wait(START_DEADLINE):
            self.stop()
            raise AssertionError(f"phonevault serve printed no URL: {self.lines} {self.proc.stderr.read()}")
        parts = urlsplit(self.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.token = parts.query.removeprefix("token=")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := re.match(r"open: (http://\S+)", line.strip()):
                self.url = m.group(1)
                self._found.set()
        self._found.set()  # exited without a URL: the waiter fails at once rather than at the deadline

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(predicate, deadline: float = 60.0, what: str = "condition"):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
