"""What a trial is and what it found: the records every room of the harness passes around.

A `TrialSpec` is decided entirely by the plan (category, operation, variant, seed, parameters), so a failing trial
is re-run by its spec alone. A `Trial` collects, while it runs, every command it issued and everything that went
wrong; `Trial.result()` freezes it into a `TrialResult`, which is what results.json holds, one per trial.

Status: `pass`; `fail` (a problem: phonevault lost data, printed a traceback, failed to detect damage it must
detect, refused to redo an interrupted operation, …); `known-gap` (only problems that match a gap recorded in
known.py, each "expected until" the work that closes it lands).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .known import KnownGap


@dataclass(frozen=True, slots=True)
class TrialSpec:
    category: str  # crash | stop | fault | damage | concurrency
    operation: str  # import, backup, forget, prune, prune-grace0, rollback, key-add, key-passwd, export, …
    variant: str  # where it stops, what it injects or damages, e.g. "event 37/312", "flip packs/3f…"
    seed: int
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.category}/{self.operation} [{self.variant}] seed {self.seed}"


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[str, ...]
    code: int
    seconds: float
    stderr_tail: str  # the last lines, for the report of a failed trial


@dataclass(frozen=True, slots=True)
class TrialResult:
    spec: TrialSpec
    status: str  # pass | fail | known-gap
    problems: tuple[str, ...]
    gaps: tuple[str, ...]  # "<gap key>: detail"
    notes: tuple[str, ...]
    landed: str  # where the kill or stop landed ("" if it did not apply or never landed)
    faults_injected: int
    damaged_made: int
    damaged_detected: int  # by `check` or `check --read-data`
    damaged_detected_plain: int  # by `check` alone
    damage_harmless: int  # damage that changed nothing a user can see (a spare key, a marker, the cache)
    bytes_lost: int  # bytes of committed snapshots that no longer export bit-exact and should have
    bytes_damaged: int  # bytes of snapshots made unreadable on purpose (damage trials: expected)
    seconds: float
    commands: tuple[Command, ...]

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["label"] = self.spec.label
        return doc


class Trial:
    """The mutable side of one trial while it runs."""

    def __init__(self, spec: TrialSpec) -> None:
        self.spec = spec
        self.problems: list[str] = []
        self.gaps: list[str] = []
        self.notes: list[str] = []
        self.landed = ""
        self.faults_injected = 0
        self.damaged_made = 0
        self.damaged_detected = 0
        self.damaged_detected_plain = 0
        self.damage_harmless = 0
        self.bytes_lost = 0
        self.bytes_damaged = 0
        self.commands: list[Command] = []
        self._start = time.monotonic()

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def gap(self, gap: KnownGap, detail: str) -> None:
        entry = f"{gap.key}: {detail}"
        if entry not in self.gaps:
            self.gaps.append(entry)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def result(self) -> TrialResult:
        status = "fail" if self.problems else "known-gap" if self.gaps else "pass"
        return TrialResult(
            self.spec, status, tuple(self.problems), tuple(self.gaps), tuple(self.notes), self.landed,
            self.faults_injected, self.damaged_made, self.damaged_detected, self.damaged_detected_plain,
            self.damage_harmless, self.bytes_lost, self.bytes_damaged, round(time.monotonic() - self._start, 2),
            tuple(self.commands),
        )  # fmt: skip
