"""What every room of the synthetic phone draws from: seeded randomness, the phone's calendar, its vocabulary.

Invariant: everything a synthetic phone holds is a pure function of its seed. Randomness comes only from
``derive(seed, label, …)`` (BLAKE3 of the parts joined by U+001F) or a ``random.Random`` seeded with such a key, each
draw under its own label, so adding a draw under a new label never changes what existing labels produce. Changing a
label, the join, or the order of draws under one label changes every generated folder.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import blake3

EPOCH = 1717236000  # 2024-06-01T10:00:00Z: the moment of day 0's backup
DAY = 86400
APPLE_EPOCH = 978307200  # 2001-01-01T00:00:00Z: Core Data and sms.db count from here

NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Radia", "Alan", "Frances")
BUNDLES = (
    "net.whatsapp.WhatsApp",
    "com.spotify.client",
    "com.google.Maps",
    "com.burbn.instagram",
    "ph.telegra.Telegraph",
    "com.netflix.Netflix",
    "com.duolingo.DuolingoMobile",
    "com.getdropbox.Dropbox",
    "org.whispersystems.signal",
    "com.microsoft.Office.Outlook",
    "com.ubercab.UberClient",
    "com.strava.stravaride",
    "com.shazam.Shazam",
)
WORDS = (
    "ok see you soon lol on my way running late dinner tonight? call me when you can thanks! "
    "sounds good where are you love it haha yes no maybe tomorrow morning photo meeting train coffee"
).split()


def derive(*parts: object) -> bytes:
    """32 bytes drawn from ``parts`` (the seed first, then labels)."""
    return blake3.blake3("\x1f".join(map(str, parts)).encode()).digest()


def rng(*parts: object) -> random.Random:
    return random.Random(derive(*parts))


def backup_time(day: int) -> int:
    """Unix time of day ``day``'s backup; every file changed that day has an mtime before it."""
    return EPOCH + day * DAY


def plist_date(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)  # plistlib (3.11) writes naive datetimes as UTC
