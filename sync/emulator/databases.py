"""The SQLite databases a synthetic phone carries: sms.db, Photos.sqlite and AddressBook.sqlitedb.

Invariant: the database of rev N is the database of rev N-1 with day N's rows changed in place (same 4 KiB page
size, rollback journal, no VACUUM), so most pages stay byte-identical from day to day — what keeps content-defined
chunking honest, as on a real phone. Rows come from the seed and the day model (Photos.sqlite has a row per
camera-roll original); the builds are deterministic, so the same (seed, size, rev) gives the same bytes.

Files: built once per phone into a private temporary directory (`<kind>-<rev>.sqlite`, written as `.tmp` then
renamed), removed when the `Databases` object is collected. Sizes: sms.db ≈ size/50 (128 KiB..64 MiB),
Photos.sqlite ≈ size/64 (128 KiB..48 MiB), AddressBook ≈ size/256 (64 KiB..8 MiB).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import uuid
import weakref
from datetime import UTC, datetime
from pathlib import Path

import blake3

from .days import DayModel, DayState
from .seeds import APPLE_EPOCH, DAY, EPOCH, NAMES, WORDS, backup_time, rng


def database_targets(size: int) -> dict[str, int]:
    """kind → the size its day-0 database is built to, for a phone of ``size`` bytes."""
    return {
        "sms": min(max(size // 50, 128 * 1024), 64 << 20),
        "photos": min(max(size // 64, 128 * 1024), 48 << 20),
        "addressbook": min(max(size // 256, 64 * 1024), 8 << 20),
    }


class Databases:
    """One phone's databases, by kind ("sms", "photos", "addressbook") and rev."""

    def __init__(self, seed: int, size: int, days: DayModel) -> None:
        self.seed = seed
        self.targets = database_targets(size)
        self._days = days
        self._cache: Path | None = None
        self._sceneprints: int | None = None

    def path(self, kind: str, rev: int) -> Path:
        """The database after day ``rev``, built once: the newest cached earlier rev plus the days since, in place."""
        if self._cache is None:
            self._cache = Path(tempfile.mkdtemp(prefix="phonevault-phone-"))
            weakref.finalize(self, shutil.rmtree, self._cache, True)
        path = self._cache / f"{kind}-{rev}.sqlite"
        if path.exists():
            return path
        base = max((d for d in range(rev) if (self._cache / f"{kind}-{d}.sqlite").exists()), default=None)
        tmp = path.with_suffix(".tmp")
        if base is None:
            tmp.unlink(missing_ok=True)
            conn = _connect(tmp)
            getattr(self, f"_build_{kind}")(conn)
            conn.close()
            base = 0
        else:
            shutil.copyfile(self._cache / f"{kind}-{base}.sqlite", tmp)
        self._days.state(rev)  # the day events below come from the state simulation
        for d in range(base + 1, rev + 1):
            state = self._days.state(d)
            if kind == "addressbook" and not state.contacts_changed:
                continue
            conn = _connect(tmp)
            getattr(self, f"_change_{kind}")(conn, d, state)
            conn.close()
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------------------------------- sms.db

    def _build_sms(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE handle (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, service TEXT NOT NULL);"
            "CREATE TABLE message (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, guid TEXT UNIQUE NOT NULL, text TEXT,"
            " handle_id INTEGER DEFAULT 0, service TEXT, date INTEGER, date_read INTEGER, is_from_me INTEGER DEFAULT 0,"
            " is_read INTEGER DEFAULT 0, attributedBody BLOB);"
            "CREATE INDEX message_idx_handle ON message(handle_id, date);"
            "CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER, message_date INTEGER DEFAULT 0,"
            " PRIMARY KEY (chat_id, message_id));"
        )
        r = rng(self.seed, "sms", 0)
        handles = [
            (f"+1{r.randint(2012000000, 9899999999)}", "iMessage" if r.random() < 0.7 else "SMS") for _ in range(60)
        ]
        conn.executemany("INSERT INTO handle (id, service) VALUES (?, ?)", handles)
        count = self.targets["sms"] // 420
        _insert_messages(conn, r, count, EPOCH - 400 * DAY, 400 * DAY)
        conn.commit()

    def _change_sms(self, conn: sqlite3.Connection, day: int, state: DayState) -> None:
        r = rng(self.seed, "sms", day)
        _insert_messages(conn, r, r.randint(10, 40), backup_time(day) - DAY, DAY - 300)
        conn.execute(
            "UPDATE message SET is_read = 1, date_read = ? WHERE is_read = 0",
            ((backup_time(day) - APPLE_EPOCH) * 10**9,),
        )
        conn.execute(
            "UPDATE message SET is_read = 0 WHERE ROWID IN (SELECT ROWID FROM message ORDER BY ROWID DESC LIMIT 3)"
        )
        conn.commit()

    # ------------------------------------------------------------------------------------------- Photos.sqlite

    def _build_photos(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE ZASSET (Z_PK INTEGER PRIMARY KEY, ZDIRECTORY VARCHAR, ZFILENAME VARCHAR, ZUUID VARCHAR,"
            " ZKIND INTEGER, ZWIDTH INTEGER, ZHEIGHT INTEGER, ZDATECREATED TIMESTAMP, ZMODIFICATIONDATE TIMESTAMP,"
            " ZTRASHEDSTATE INTEGER, ZHASADJUSTMENTS INTEGER);"
            "CREATE INDEX ZASSET_ZFILENAME ON ZASSET(ZFILENAME);"
            "CREATE TABLE ZADDITIONALASSETATTRIBUTES (Z_PK INTEGER PRIMARY KEY, ZASSET INTEGER, ZORIGINALFILENAME VARCHAR,"
            " ZORIGINALFILESIZE INTEGER, ZEXIFTIMESTAMPSTRING VARCHAR, ZREVERSELOCATIONDATA BLOB);"
            "CREATE TABLE ZSCENEPRINT (Z_PK INTEGER PRIMARY KEY, ZADDITIONALASSETATTRIBUTES INTEGER, ZDATA BLOB);"
            "CREATE INDEX ZSCENEPRINT_ZAAA ON ZSCENEPRINT(ZADDITIONALASSETATTRIBUTES);"
        )
        state = self._days.state(0)
        for original in state.assets:
            self._insert_asset(conn, original, state)
        conn.commit()

    def _insert_asset(self, conn: sqlite3.Connection, original: str, state: DayState) -> None:
        f = state.files[state.assets[original][0]]
        r = rng(self.seed, "asset", original)
        directory, name = original.rsplit("/", 1)
        apple = f.entry.mtime - APPLE_EPOCH
        cur = conn.execute(
            "INSERT INTO ZASSET (ZDIRECTORY, ZFILENAME, ZUUID, ZKIND, ZWIDTH, ZHEIGHT, ZDATECREATED, ZMODIFICATIONDATE,"
            " ZTRASHEDSTATE, ZHASADJUSTMENTS) VALUES (?, ?, ?, ?, 4032, 3024, ?, ?, 0, 0)",
            (
                directory.removeprefix("Media/"),
                name,
                str(uuid.UUID(bytes=r.randbytes(16))).upper(),
                int(f.kind == "video"),
                apple,
                apple,
            ),
        )
        asset_pk = cur.lastrowid
        cur = conn.execute(
            "INSERT INTO ZADDITIONALASSETATTRIBUTES (ZASSET, ZORIGINALFILENAME, ZORIGINALFILESIZE, ZEXIFTIMESTAMPSTRING,"
            " ZREVERSELOCATIONDATA) VALUES (?, ?, ?, ?, ?)",
            (
                asset_pk,
                name,
                f.entry.size,
                datetime.fromtimestamp(f.entry.mtime, UTC).strftime("%Y:%m:%d %H:%M:%S"),
                r.randbytes(500),
            ),
        )
        n = self._sceneprint_count()
        conn.executemany(
            "INSERT INTO ZSCENEPRINT (ZADDITIONALASSETATTRIBUTES, ZDATA) VALUES (?, ?)",
            [(cur.lastrowid, r.randbytes(2048)) for _ in range(n)],
        )

    def _sceneprint_count(self) -> int:
        # Scene prints pad Photos.sqlite to a realistic size per asset; the per-asset count is fixed by day 0.
        if self._sceneprints is None:
            self._sceneprints = max(1, self.targets["photos"] // max(len(self._days.state(0).assets), 1) // 2200)
        return self._sceneprints

    def _change_photos(self, conn: sqlite3.Connection, day: int, state: DayState) -> None:
        for original in state.added:
            self._insert_asset(conn, original, state)
        for original in state.edited:
            mtime = state.files[state.assets[original][0]].entry.mtime - APPLE_EPOCH
            conn.execute(
                "UPDATE ZASSET SET ZMODIFICATIONDATE = ?, ZHASADJUSTMENTS = 1 WHERE ZFILENAME = ?",
                (mtime, original.rsplit("/", 1)[1]),
            )
        for original in state.removed:
            name = original.rsplit("/", 1)[1]
            conn.execute(
                "UPDATE ZASSET SET ZTRASHEDSTATE = 1, ZMODIFICATIONDATE = ? WHERE ZFILENAME = ?",
                (backup_time(day) - APPLE_EPOCH, name),
            )
        conn.commit()

    # ------------------------------------------------------------------------------------------- AddressBook

    def _build_addressbook(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            "CREATE TABLE ABPerson (ROWID INTEGER PRIMARY KEY AUTOINCREMENT, First TEXT, Last TEXT, Organization TEXT,"
            " Note TEXT, ModificationDate INTEGER, ImageData BLOB);"
            "CREATE TABLE ABMultiValue (UID INTEGER PRIMARY KEY, record_id INTEGER, property INTEGER, label INTEGER, value TEXT);"
            "CREATE INDEX ABMultiValueRecord ON ABMultiValue(record_id);"
        )
        r = rng(self.seed, "contacts", 0)
        for _ in range(max(self.targets["addressbook"] // 1500, 10)):
            _insert_person(conn, r, EPOCH - r.randrange(900 * DAY))
        conn.commit()

    def _change_addressbook(self, conn: sqlite3.Connection, day: int, state: DayState) -> None:
        r = rng(self.seed, "contacts", day)
        (count,) = conn.execute("SELECT max(ROWID) FROM ABPerson").fetchone()
        conn.execute(
            "UPDATE ABPerson SET Note = ?, ModificationDate = ? WHERE ROWID = ?",
            (" ".join(r.choices(WORDS, k=10)), backup_time(day) - APPLE_EPOCH, r.randint(1, count)),
        )
        if r.random() < 0.5:
            _insert_person(conn, r, backup_time(day) - 3600)
        conn.commit()


def _insert_messages(conn: sqlite3.Connection, r: random.Random, count: int, start: int, span: int) -> None:
    texts = [" ".join(r.choices(WORDS, k=k)) for k in range(2, 32)] * 4
    r.shuffle(texts)
    # One XOF read per batch feeds guids and attributedBody blobs: per-row randbytes dominated build time.
    pool = blake3.blake3(r.randbytes(32)).digest(count * 316)
    rows = []
    pos = 0
    for i in range(count):
        n = 60 + pool[pos] + (pool[pos + 1] & 0x1F)
        guid = pool[pos + 2 : pos + 18].hex().upper()
        rows.append(
            (
                f"{guid[:8]}-{guid[8:12]}-{guid[12:16]}-{guid[16:20]}-{guid[20:]}",
                texts[(i * 7 + pool[pos + 18]) % len(texts)],
                1 + pool[pos + 19] % 60,
                (start + span * i // max(count, 1) - APPLE_EPOCH) * 10**9,  # sms.db: nanoseconds since 2001
                pool[pos + 20] & 1,
                pool[pos + 21 : pos + 21 + n],
            )
        )
        pos += 21 + n
    conn.executemany(
        "INSERT INTO message (guid, text, handle_id, service, date, is_from_me, is_read, attributedBody)"
        " VALUES (?, ?, ?, 'iMessage', ?, ?, 1, ?)",
        rows,
    )
    conn.execute(
        "INSERT INTO chat_message_join SELECT handle_id, ROWID, date FROM message WHERE ROWID > ?",
        (conn.execute("SELECT coalesce(max(message_id), 0) FROM chat_message_join").fetchone()[0],),
    )


def _insert_person(conn: sqlite3.Connection, r: random.Random, when: int) -> None:
    cur = conn.execute(
        "INSERT INTO ABPerson (First, Last, Organization, Note, ModificationDate, ImageData) VALUES (?, ?, ?, ?, ?, ?)",
        (
            r.choice(NAMES),
            r.choice(NAMES) + "son",
            r.choice(("", "ACME", "Initech")),
            " ".join(r.choices(WORDS, k=8)),
            when - APPLE_EPOCH,
            r.randbytes(r.randint(0, 1800)),
        ),
    )
    conn.executemany(
        "INSERT INTO ABMultiValue (record_id, property, label, value) VALUES (?, ?, ?, ?)",
        [
            (cur.lastrowid, 3, 1, f"+1{r.randint(2012000000, 9899999999)}"),
            (cur.lastrowid, 4, 2, f"p{r.randrange(10**6)}@example.com"),
        ],
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = DELETE")
    return conn
