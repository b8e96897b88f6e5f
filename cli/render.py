"""Output: rich tables for people, one JSON document for programs, progress bars on stderr for long work."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click

from phonevault.store.repository import format_time


class LazyConsole:
    """A rich Console made on first use: rich costs ~30 ms and 55 modules to import, which a command that prints a
    line or nothing (`extract` of one photo, `cat`) does not need. Only `print` and `console` are used."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console = None

    @property
    def console(self):  # a rich.console.Console, not imported at module level
        if self._console is None:
            from rich.console import Console

            stream = sys.stderr if self._stderr else sys.stdout
            # Piped output is not wrapped at 80 columns: a table row stays one line for grep and less.
            self._console = Console(stderr=self._stderr, highlight=False, width=None if stream.isatty() else 250)
        return self._console

    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, **kwargs)


out = LazyConsole(stderr=False)
err = LazyConsole(stderr=True)


def human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def when(us: int | None) -> str:
    return format_time(us) if us else "-"


def emit_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(Text("" if v is None else str(v)) for v in r))  # plain text: names come from phones
    out.print(t)


@contextmanager
def progress(description: str, total: int | None) -> Iterator:
    """Yields update(done, total) for a byte-counting bar on stderr. On a terminal it is a live bar; otherwise (a
    log, cron, a script) one line at each 10 % step of a known total, e.g. `importing 00008030: 40 % (19.2 MiB of
    48.0 MiB)`, which is also what scripts and tests can wait for. The lines are written as they are (no rich: a
    name is never taken for markup or an emoji code, and a short command does not import it)."""
    if not sys.stderr.isatty():
        from phonevault.sync.paths import shown  # a folder's name may hold terminal escapes (rich stripped them)

        step = [0]  # the last 10 % step printed

        def line(done: int, total_now: int | None = None) -> None:
            known = total_now if total_now is not None else total
            if known and (s := min(10, done * 10 // known)) > step[0]:
                step[0] = s
                click.echo(f"{shown(description)}: {s * 10} % ({human(done)} of {human(known)})", err=True)

        yield line
        return

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err.console,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        last = [0.0]

        def update(done: int, total_now: int | None = None) -> None:
            known = total_now if total_now is not None else total
            # Called per block by the library; redrawing is only worth it ten times a second.
            now = time.monotonic()
            if now - last[0] >= 0.1 or (total_now is not None and done >= total_now):
                last[0] = now
                bar.update(task, completed=done, total=known)

        yield update
