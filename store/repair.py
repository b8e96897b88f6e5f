"""`check --repair-index`: index objects rebuilt from the packs' own headers.

Every pack ends with a sealed header listing its blobs exactly as its index object does (store/packs.py), so an
index object that is missing (a crash between pack and index, a deleted file), unreadable (damaged on disk) or
that disagrees with its pack's header can be written again from the pack: `index/<pack>` = the header's entries,
sealed as store/index.py writes it. Then the local cache's blob index is rebuilt from index/ (the cache would
otherwise keep trusting what it loaded from the damaged object).

It only ever writes index objects; it deletes nothing, and a pack whose header cannot be read is named and left
alone (its index object, if it has one, is the only description of it). An index object describing a pack that
does not exist is not touched either (check notes it; prune reclaims it). Racing a prune that sweeps a pack is
harmless: the pack's header is read before its index is written, so a pack already gone is skipped, and an index
written just before the sweep deletes it again is one more object check notes and prune reclaims.
Memory: one pack's header at a time (two ranged reads per pack, never its data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import CorruptObject, MissingObject, UnsupportedFormat
from .index import decode_index, index_name, write_index
from .packs import read_header
from .repository import Repository


@dataclass(frozen=True, slots=True)
class RepairedIndex:
    index: str  # the object written, index/<pack id>
    reason: str  # "missing" | "unreadable" | "disagreed with its pack's header"
    blobs: int


@dataclass(slots=True)
class RepairReport:
    packs: int = 0
    written: list[RepairedIndex] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # packs whose header cannot be read: left alone


def repair_index(repo: Repository) -> RepairReport:
    rep = RepairReport()
    have = {name for name, _ in repo.backend.list("index/")}
    for name, size in sorted(repo.backend.list("packs/")):
        pack = name.rsplit("/", 1)[1]
        rep.packs += 1
        iname = index_name(pack)
        current = None
        reason = "missing"
        if iname in have:
            try:
                current = decode_index(repo.key, iname, repo.backend.get(iname))
                reason = "disagreed with its pack's header"
            except (CorruptObject, UnsupportedFormat):
                reason = "unreadable"
            except MissingObject:
                pass
        try:
            header = read_header(repo.backend, repo.key, pack, size)
        except MissingObject:
            continue  # swept by a prune since the listing: nothing to describe
        except (CorruptObject, UnsupportedFormat) as e:
            rep.problems.append(f"{e}; its index object was left as it is")
            continue
        except (ValueError, struct.error):  # shorter than a trailer
            rep.problems.append(f"{name}: too short to be a pack; its index object was left as it is")
            continue
        if current == header:
            continue
        write_index(repo.backend, repo.key, pack, header)
        rep.written.append(RepairedIndex(iname, reason, len(header)))
    if rep.written:
        repo.cache.clear_index()
        repo.sync_index()
        # what opening the vault said of the objects just rewritten is no longer true
        fixed = [r.index for r in rep.written]
        repo.warnings[:] = [w for w in repo.warnings if not any(i in w for i in fixed)]
    return rep
