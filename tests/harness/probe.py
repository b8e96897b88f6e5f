"""The child side of a crash trial: runs `phonevault ARGS…` with a probe that stops it at a chosen point.

    python tests/harness/probe.py --watch DIR [--watch DIR…] [--match TEXT…] [--at event:N | --at bytes:B]
        [--then kill|pause] [--release FILE] [--count FILE] -- ARGS…

Run by path (not `-m`), so it needs nothing but the standard library and an installed phonevault. Points:
- `event:N`: the Nth file-system event under a watched folder (the vault, its cache, an import's source folder),
  as reported by Python's audit hooks: `open` (reads and writes), `os.link`, `os.rename` (also os.replace),
  `os.remove` (also os.unlink), `os.mkdir`, `os.rmdir`. `os.link` of a vault object is the moment "between fsync
  and link" (its temporary file is written and fsynced; the name does not exist yet). With `--match`, only events
  whose "<event> <path>" contains every TEXT count (`--match os.link --match /events/`: the commit point).
- `bytes:B`: the moment the store's FileWriter has been handed B bytes of file content (mid-chunking, in an
  import or a device backup alike) — a pure observer wrapped around `FileWriter.write`.
At the point the probe writes `PV-PROBE-POINT <n> <what>` on stderr (fd 2, unbuffered), then either SIGKILLs its
own process at once (`kill`: no other thread gets to run on, so the kill point is exact and repeatable) or blocks
the thread that reached it until FILE exists (`pause`; the harness usually SIGSTOPs the whole process then).
`--count FILE` writes `<events> <bytes> <links>` at exit: the census of a run that is not stopped, from which the
harness draws its kill points. Events before phonevault's main() starts are never counted (nothing touches a watched
folder during interpreter start-up), so a kill always lands inside the operation.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

MARK = "PV-PROBE-POINT"
FS_EVENTS = {"open": 0, "os.link": 1, "os.rename": 1, "os.remove": 0, "os.mkdir": 0, "os.rmdir": 0}
PAUSE_LIMIT_S = 600.0  # a paused child nobody releases gives up rather than outlive the harness


class Probe:
    def __init__(
        self, watched: list[str], match: list[str], at: tuple[str, int] | None, then: str, release: str | None
    ) -> None:
        self.roots = tuple(os.path.join(os.path.realpath(w), "") for w in watched) + tuple(
            os.path.join(os.path.abspath(w), "") for w in watched
        )
        self.match = tuple(match)
        self.kind, self.target = at if at else ("", 0)
        self.then = then
        self.release = release
        self.events = 0
        self.links = 0  # os.link events among them: each a moment "between fsync and link"
        self.fed = 0
        self.lock = threading.Lock()
        self.busy = threading.local()  # no event raised from inside the hook is counted (recursion)
        self.reached = False

    def watched(self, path: object) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif not isinstance(path, str):
            path = getattr(path, "__fspath__", lambda: None)()
            if not isinstance(path, str):
                return None  # a file descriptor
        if not os.path.isabs(path):
            path = os.path.join(os.getcwd(), path)
        return path if path.startswith(self.roots) else None

    def audit(self, event: str, args: tuple) -> None:
        which = FS_EVENTS.get(event)
        if which is None or getattr(self.busy, "on", False):
            return
        self.busy.on = True
        try:
            path = self.watched(args[which]) if len(args) > which else None
            if path is None:
                return
            what = f"{event} {path}"
            if not all(m in what for m in self.match):
                return
            with self.lock:
                self.events += 1
                self.links += event == "os.link"
                n = self.events
            if self.kind == "event" and n == self.target:
                self.point(n, what)
        finally:
            self.busy.on = False

    def feed(self, nbytes: int) -> None:
        with self.lock:
            before, self.fed = self.fed, self.fed + nbytes
        if self.kind == "bytes" and before < self.target <= self.fed:
            self.point(self.target, f"fed {self.target} bytes")

    def point(self, n: int, what: str) -> None:
        if self.reached:
            return
        self.reached = True
        os.write(2, f"\n{MARK} {n} {what}\n".encode(errors="replace"))
        if self.then == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not (self.release and os.path.exists(self.release)):
            if time.monotonic() > deadline:
                os._exit(99)
            time.sleep(0.005)


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    if "--" not in argv:
        raise SystemExit("probe: give phonevault's arguments after --")
    own, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    opts: dict = {"watch": [], "match": [], "at": None, "then": "kill", "release": None, "count": None}
    it = iter(own)
    for flag in it:
        value = next(it)
        if flag in ("--watch", "--match"):
            opts[flag[2:]].append(value)
        elif flag == "--at":
            kind, _, n = value.partition(":")
            if kind not in ("event", "bytes") or not n.isdigit():
                raise SystemExit(f"probe: --at {value}: event:N or bytes:B")
            opts["at"] = (kind, int(n))
        elif flag in ("--then", "--release", "--count"):
            opts[flag[2:]] = value
        else:
            raise SystemExit(f"probe: unknown option {flag}")
    return opts, rest


def main() -> None:
    opts, args = parse(sys.argv[1:])
    probe = Probe(opts["watch"], opts["match"], opts["at"], opts["then"], opts["release"])

    from phonevault.cli.main import main as phonevault_main
    from phonevault.store import writer

    write = writer.FileWriter.write

    def observed_write(self, data):  # the store's own write, after counting what it is handed
        probe.feed(len(data))
        return write(self, data)

    writer.FileWriter.write = observed_write
    if opts["count"]:
        import atexit

        def census() -> None:
            with open(opts["count"], "w") as f:
                f.write(f"{probe.events} {probe.fed} {probe.links}\n")

        atexit.register(census)
    sys.addaudithook(probe.audit)
    sys.argv = ["phonevault", *args]
    phonevault_main()


if __name__ == "__main__":
    main()
