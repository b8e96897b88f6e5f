"""A backup's own date: what dates the snapshot of a backup folder, in what order, and which dates are not trusted.

A snapshot's `time` is the date of the backup it holds, which orders history, picks the current snapshot, resolves
`DEVICE@DATE` and `rollback --to DATE`, and buckets retention. A folder import takes the first of these sources
that holds a date it can trust, and records which one in `BackupMeta.dated_by`:

    status-plist    Status.plist's Date: when the backup finished (iOS 4 and later; idevicebackup for iPhone OS 3)
    manifest-plist  Manifest.plist's Date (iOS 4 and later)
    info-plist      Info.plist's Last Backup Date (iTunes and libimobiledevice; iPhone OS 3 backups had only this)
    newest-mtime    the newest mtime of the folder's regular files: no plist dates the backup, which is named
    stored          when it was stored: nothing above could be trusted (named), or a device backup, which is dated
                    when the device reports success; every snapshot recorded before dates had sources was dated so

Not trusted, named as a problem, and passed over for the next source: a date more than a day ahead of now (a host
clock set wrong, a damaged plist; a day covers every time zone a careless writer may have meant) and a date before
2007 (before any iPhone: typically a zero date, 2001-01-01 being Apple's epoch). A source that is simply missing is
not a problem while a later plist dates the backup (iPhone OS 3 wrote no Status.plist and no Manifest.plist Date).
Plist dates are UTC: plistlib reads them as naive datetimes in UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

STATUS_PLIST = "status-plist"
MANIFEST_PLIST = "manifest-plist"
INFO_PLIST = "info-plist"
NEWEST_MTIME = "newest-mtime"
STORED = "stored"

LABELS = {
    STATUS_PLIST: "Status.plist's Date",
    MANIFEST_PLIST: "Manifest.plist's Date",
    INFO_PLIST: "Info.plist's Last Backup Date",
    NEWEST_MTIME: "its newest file's mtime",
    STORED: "the time it was stored",
}

AHEAD = 86_400 * 10**6  # microseconds: how far ahead of now a date may be and still be trusted
FLOOR_US = int(datetime(2007, 1, 1, tzinfo=UTC).timestamp()) * 10**6  # before any iPhone
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plist_time_us(value: datetime) -> int:
    """A plist date as microseconds since the epoch (naive = UTC, as plistlib reads them; exact, no float)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def format_us(t: int) -> str:
    return (_EPOCH + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BackupDate:
    time_us: int | None  # None: date it when it is stored (the writer's commit time)
    source: str  # one of the sources above, as BackupMeta.dated_by records it
    problems: tuple[str, ...] = ()


def date_backup(
    plist_dates: Sequence[tuple[str, datetime | None]], newest_mtime_ns: int | None, now_us: int
) -> BackupDate:
    """The date of a backup folder from its plists' dates (in the order above, None where missing) and its newest
    file mtime, as seen at `now_us`."""
    problems: list[str] = []

    def trusted(source: str, t: int) -> bool:
        if t > now_us + AHEAD:
            problems.append(f"{LABELS[source]} is {format_us(t)}, in the future; not trusted as the backup's date")
        elif t < FLOOR_US:
            problems.append(f"{LABELS[source]} is {format_us(t)}, before any iPhone; not trusted as the backup's date")
        else:
            return True
        return False

    for source, value in plist_dates:
        if value is not None and trusted(source, t := plist_time_us(value)):
            return BackupDate(t, source, tuple(problems))
    plists = "no trusted date" if problems else "no date"
    if newest_mtime_ns is not None and trusted(NEWEST_MTIME, t := newest_mtime_ns // 1000):
        problems.append(f"{plists} in Status.plist, Manifest.plist or Info.plist: dated by its newest file's mtime, "
                        f"{format_us(t)}")  # fmt: skip
        return BackupDate(t, NEWEST_MTIME, tuple(problems))
    problems.append("no trusted date in Status.plist, Manifest.plist, Info.plist or its files' mtimes: dated when "
                    "it was stored")  # fmt: skip
    return BackupDate(None, STORED, tuple(problems))
