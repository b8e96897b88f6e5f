"""Which snapshots a retention policy keeps: a pure function, as in restic's `forget --keep-*`.

Newest first, a snapshot is kept if it is among the `last` newest, or the newest of one of the `daily` most recent
days (UTC) that have snapshots, likewise `weekly` (ISO weeks) and `monthly`. Pinned snapshots and the current head
are always kept. An empty policy keeps everything (forgetting needs an explicit rule).

`keep_reasons` says why each kept snapshot is kept, every reason that applies, in this order: "pinned", "current",
"keep-last N", "keep-daily N", "keep-weekly N", "keep-monthly N" (or "no keep rule" for an empty policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


@dataclass(frozen=True, slots=True)
class Candidate:
    id: bytes
    time: int  # microseconds
    pinned: bool = False
    head: bool = False


def _bucketed(cands: Sequence[Candidate], n: int, bucket: Callable[[datetime], tuple]) -> list[bytes]:
    keep: list[bytes] = []
    seen: set[tuple] = set()
    for c in cands:
        if len(seen) >= n:
            break
        b = bucket(datetime.fromtimestamp(c.time / 1e6, UTC))
        if b not in seen:
            seen.add(b)
            keep.append(c.id)
    return keep


def keep_reasons(candidates: Sequence[Candidate], policy: Policy) -> dict[bytes, tuple[str, ...]]:
    """Every kept snapshot -> why (see the module docstring); a candidate absent from the result is not kept."""
    reasons: dict[bytes, list[str]] = {}

    def add(ids: Iterable[bytes], why: str) -> None:
        for i in ids:
            reasons.setdefault(i, []).append(why)

    add((c.id for c in candidates if c.pinned), "pinned")
    add((c.id for c in candidates if c.head), "current")
    if policy.empty():
        add((c.id for c in candidates), "no keep rule")
    newest_first = sorted(candidates, key=lambda c: c.time, reverse=True)
    if policy.last:
        add((c.id for c in newest_first[: policy.last]), f"keep-last {policy.last}")
    if policy.daily:
        add(_bucketed(newest_first, policy.daily, lambda d: (d.year, d.month, d.day)), f"keep-daily {policy.daily}")
    if policy.weekly:
        add(
            _bucketed(newest_first, policy.weekly, lambda d: tuple(d.isocalendar())[:2]), f"keep-weekly {policy.weekly}"
        )
    if policy.monthly:
        add(_bucketed(newest_first, policy.monthly, lambda d: (d.year, d.month)), f"keep-monthly {policy.monthly}")
    return {i: tuple(r) for i, r in reasons.items()}


def keep_set(candidates: Sequence[Candidate], policy: Policy) -> set[bytes]:
    return set(keep_reasons(candidates, policy))
