"""`stats`: what the vault holds versus what it costs on disk, per device and in total.

logical = the sum of every live snapshot's size (what keeping each version as its own folder would take);
unique = plaintext bytes of the distinct blobs those snapshots need; stored = their sealed (compressed,
encrypted) bytes. dedup ratio = logical / unique; compression ratio = unique / stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from .prune import snapshot_blobs
from .repository import Repository


@dataclass(frozen=True, slots=True)
class Usage:
    name: str
    snapshots: int
    logical: int
    unique: int
    stored: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical / self.unique if self.unique else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique / self.stored if self.stored else 1.0


def _usage(repo: Repository, name: str, snaps: list, blobs: set[bytes]) -> Usage:
    unique = stored = 0
    for bid in blobs:
        loc = repo.locate(bid)
        if loc is not None:
            unique += loc.raw_length
            stored += loc.length
    return Usage(name, len(snaps), sum(s.stats.size for s in snaps), unique, stored)


def usage(repo: Repository) -> tuple[list[Usage], Usage, int]:
    """(per device, all devices, bytes the repository occupies in its backend)."""
    per_device = []
    all_blobs: set[bytes] = set()
    all_snaps: list = []
    for key in repo.device_keys():
        view = repo.view(key)
        blobs: set[bytes] = set()
        seen: set[bytes] = set()
        for snap in view.live():
            blobs.update(snapshot_blobs(repo, snap, seen))
        per_device.append(_usage(repo, view.info.name or view.device or key, view.live(), blobs))
        all_blobs |= blobs
        all_snaps += view.live()
    on_disk = sum(size for _, size in repo.backend.list(""))
    return per_device, _usage(repo, "all devices", all_snaps, all_blobs), on_disk
