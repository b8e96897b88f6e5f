"""Which snapshots a retention policy keeps: a pure function, as in restic's `forget --keep-*`.

Newest first, a snapshot is kept if it is among the `last` newest, or the newest of one of the `daily` most recent
days (UTC) that have snapshots, likewise `weekly` (ISO weeks) and `monthly`. Pinned snapshots and the current head
are always kept. An empty policy keeps everything (forgetting needs an explicit rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def _bucketed(cands: Sequence[Candidate], n: int, bucket: Callable[[datetime], tuple]) -> set[bytes]:
    keep: set[bytes] = set()
    seen: set[tuple] = set()
    for c in cands:
        if len(seen) >= n:
            break
        b = bucket(datetime.fromtimestamp(c.time / 1e6, UTC))
        if b not in seen:
            seen.add(b)
            keep.add(c.id)
    return keep


def keep_set(candidates: Sequence[Candidate], policy: Policy) -> set[bytes]:
    if policy.empty():
        return {c.id for c in candidates}
    newest_first = sorted(candidates, key=lambda c: c.time, reverse=True)
    keep = {c.id for c in newest_first[: policy.last]}
    keep |= _bucketed(newest_first, policy.daily, lambda d: (d.year, d.month, d.day))
    keep |= _bucketed(newest_first, policy.weekly, lambda d: tuple(d.isocalendar())[:2])
    keep |= _bucketed(newest_first, policy.monthly, lambda d: (d.year, d.month))
    keep |= {c.id for c in candidates if c.pinned or c.head}
    return keep
