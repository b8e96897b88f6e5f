"""What a phone's next full backup does to an encrypted backup folder: every file, and Manifest.db, encrypted again
under a fresh key of its own, each new key wrapped by the same class key (into the file's Manifest.db row, and the
ManifestKey of Manifest.plist); contents, names and mtimes unchanged.

The dedup measurements need exactly that pair of folders (benchmarks/encrypted_bench.py, and
tests/cli/test_encrypted_dedup_cli.py): the same content as two full encrypted backups, every byte of ciphertext
different. Keys are derived from `salt`, so a run is repeatable. Test and benchmark data only: the decrypted
Manifest.db is a scratch file beside the folder while it is edited.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import sqlite3
import struct
from pathlib import Path

from phonevault.sync.ioscrypto import decrypt, encrypt, parse_keybag, unlock_class_keys, unwrap_key, wrapped_key
from phonevault.sync.mbfile import decode_mbfile, encode_mbfile


def _rewrite(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def rekey_folder(folder: Path, password: str, salt: bytes) -> Path:
    """Encrypt the encrypted backup `folder` again in place, as its phone's next full backup would; returns it."""
    plist = plistlib.loads((folder / "Manifest.plist").read_bytes())
    class_keys = unlock_class_keys(parse_keybag(plist["BackupKeyBag"]), password)
    scratch = folder.parent / f"{folder.name}.scratch.db"
    db_key = unwrap_key(class_keys, plist["ManifestKey"])
    scratch.write_bytes(b"".join(decrypt(db_key, [(folder / "Manifest.db").read_bytes()])))
    try:
        conn = sqlite3.connect(scratch)
        with conn:
            for fid, blob in conn.execute("SELECT fileID, file FROM Files WHERE flags = 1").fetchall():
                fields = decode_mbfile(blob)
                old = fields["EncryptionKey"]
                new = hashlib.sha256(salt + fid.encode()).digest()
                path = folder / fid[:2] / fid
                plain = b"".join(decrypt(unwrap_key(class_keys, old), [path.read_bytes()]))
                _rewrite(path, b"".join(encrypt(new, iter([plain]))))
                pclass = struct.unpack("<I", old[:4])[0]
                fields["EncryptionKey"] = wrapped_key(pclass, class_keys[pclass], new)
                conn.execute("UPDATE Files SET file = ? WHERE fileID = ?", (encode_mbfile(fields), fid))
        conn.close()
        new_db_key = hashlib.sha256(salt + b"Manifest.db").digest()
        _rewrite(folder / "Manifest.db", b"".join(encrypt(new_db_key, iter([scratch.read_bytes()]))))
    finally:
        scratch.unlink(missing_ok=True)
    pclass = struct.unpack("<I", plist["ManifestKey"][:4])[0]
    plist["ManifestKey"] = wrapped_key(pclass, class_keys[pclass], new_db_key)
    (folder / "Manifest.plist").write_bytes(plistlib.dumps(plist, fmt=plistlib.FMT_BINARY))
    return folder
