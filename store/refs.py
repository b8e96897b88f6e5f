"""Naming devices and snapshots the way users do.

Device: a UDID, a UDID prefix (≥ 4 chars), the device name (case-insensitive), or a device-key prefix.
Snapshot: an id prefix (≥ 4 hex chars, unique across the vault), `latest` / `current` (with a device, or when the
vault holds one device), or `DEVICE@WHEN` where WHEN is `latest`, `current`, an ISO date (`2026-11-25`: the end of
that day) or date-time (`2026-11-25T14:30`), interpreted as UTC unless it carries an offset.
Within one device (`rollback DEVICE --to X`): an id prefix of one of its snapshots, or any WHEN above.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .errors import DeviceNotFound, SnapshotNotFound
from .projections import DeviceView, SnapshotRecord, at_or_before
from .repository import Repository

MIN_PREFIX = 4


_PRECISION = {10: timedelta(days=1), 13: timedelta(hours=1), 16: timedelta(minutes=1), 19: timedelta(seconds=1)}


def parse_when(text: str) -> int:
    """An ISO date or date-time -> the last microsecond it names, since the epoch: a date means the end of that day,
    `…T14:30` the end of that minute (so `DEVICE@2026-11-25T14:30` is the last snapshot within that minute), `…T14`
    the end of that hour, seconds the end of that second. UTC unless an offset is given."""
    try:
        clock, offset = text.replace("Z", "+00:00"), ""
        if "T" in clock and (sign := max(clock.rfind("+"), clock.rfind("-"))) > clock.index("T"):
            clock, offset = clock[:sign], clock[sign:]
        step = _PRECISION.get(len(clock), timedelta(microseconds=1))
        dt = datetime.fromisoformat(clock + ":00" * (len(clock) == 13) + offset)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
    except ValueError:
        raise SnapshotNotFound(text, "not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    end = dt + step - timedelta(microseconds=1)
    return (int(end.timestamp()) * 1_000_000) + end.microsecond


def _name_key(name: str) -> str:
    """Device names as people type them: case-insensitive, and a typographic apostrophe (what iOS puts in
    "Radia’s iPhone") equal to the typewriter one."""
    return name.replace("\u2019", "'").replace("\u2018", "'").replace("\u02bc", "'").casefold()


def resolve_device(repo: Repository, ref: str) -> DeviceView:
    views = repo.devices()
    low = ref.lower()
    exact = [v for v in views if v.device and v.device.lower() == low]
    if exact:
        return exact[0]
    named = [v for v in views if _name_key(v.info.name) == _name_key(ref)]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise DeviceNotFound(ref, f"{len(named)} devices have this name; use a UDID prefix")
    if len(ref) >= MIN_PREFIX:
        pref = [v for v in views if (v.device or "").lower().startswith(low) or v.key.startswith(low)]
        if len(pref) == 1:
            return pref[0]
        if len(pref) > 1:
            raise DeviceNotFound(ref, "ambiguous device prefix")
    raise DeviceNotFound(ref)


def _only_device(repo: Repository, what: str) -> DeviceView:
    views = repo.devices()
    if len(views) == 1:
        return views[0]
    raise SnapshotNotFound(what, f"the vault holds {len(views)} devices: say which one, as DEVICE@{what}")


def _pick(view: DeviceView, when: str) -> SnapshotRecord:
    live = view.live()
    if not live:
        raise SnapshotNotFound(when, "this device has no snapshots")
    if when == "latest":
        return max(live, key=lambda s: (s.time, s.seq))
    if when == "current":
        rec = view.head_record
        if rec is None:
            raise SnapshotNotFound(when, "no current snapshot")
        return rec
    rec = at_or_before(view, parse_when(when))
    if rec is None:
        raise SnapshotNotFound(when, "no snapshot of this device at or before that time")
    return rec


def resolve_snapshot(repo: Repository, ref: str, device: str | None = None) -> tuple[DeviceView, SnapshotRecord]:
    if "@" in ref:
        dev, when = ref.rsplit("@", 1)
        view = resolve_device(repo, dev)
        return view, _pick(view, when)
    if ref in ("latest", "current"):
        view = resolve_device(repo, device) if device else _only_device(repo, ref)
        return view, _pick(view, ref)
    if not _is_id_prefix(ref):
        raise SnapshotNotFound(ref, f"not a snapshot id prefix (≥ {MIN_PREFIX} hex chars), latest, or DEVICE@DATE")
    views = [resolve_device(repo, device)] if device else repo.devices()
    return _by_prefix(views, ref)


def resolve_in_device(view: DeviceView, text: str) -> SnapshotRecord:
    """One of `view`'s snapshots: an id prefix (≥ 4 hex chars: a hex word is always taken as an id, never as a
    date), `latest`, `current`, a date or a date-time. Raises SnapshotNotFound naming `text`."""
    if _is_id_prefix(text):
        return _by_prefix([view], text)[1]
    return _pick(view, text)


def _is_id_prefix(text: str) -> bool:
    return len(text) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in text.lower())


def _by_prefix(views: list[DeviceView], ref: str) -> tuple[DeviceView, SnapshotRecord]:
    low = ref.lower()
    hits = [(v, s) for v in views for s in v.snapshots if s.hex.startswith(low)]
    if not hits:
        raise SnapshotNotFound(ref)
    if len(hits) > 1:
        raise SnapshotNotFound(ref, f"ambiguous: {len(hits)} snapshots start with it")
    view, rec = hits[0]
    if rec.forgotten:
        raise SnapshotNotFound(ref, "this snapshot was forgotten")
    return view, rec
