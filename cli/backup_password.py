"""Where browsing commands get the phone's backup password (for snapshots the phone encrypted).

In order: `--backup-password PASSWORD` (visible in the shell's history and to `ps`: for scripts that accept that),
`PHONEVAULT_BACKUP_PASSWORD`, the first line of the file `PHONEVAULT_BACKUP_PASSWORD_FILE`, else a prompt on the
terminal. Nothing is asked until an encrypted snapshot is actually read, so `ls` of a plain one never prompts; with no
terminal and no password, reading an encrypted snapshot is BackupPasswordNeeded (one line, exit 1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from phonevault.store.errors import PhonevaultError
from phonevault.sync.encrypted import BackupPassword

backup_password_option = click.option(
    "--backup-password",
    "backup_password",
    metavar="PASSWORD",
    default=None,
    help="The phone's backup password, for snapshots it encrypted (else $PHONEVAULT_BACKUP_PASSWORD, "
    "$PHONEVAULT_BACKUP_PASSWORD_FILE, or a prompt; given here it lands in your shell history).",
)


def password_from(given: str | None) -> BackupPassword:
    """A BackupPassword that looks for the password only when an encrypted snapshot needs it."""

    def source() -> str | None:
        if given is not None:
            return given
        if (pw := os.environ.get("PHONEVAULT_BACKUP_PASSWORD")) is not None:
            return pw
        if path := os.environ.get("PHONEVAULT_BACKUP_PASSWORD_FILE"):
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise PhonevaultError(
                    f"PHONEVAULT_BACKUP_PASSWORD_FILE {path}: {getattr(e, 'strerror', None) or e}"
                ) from None
            return text.splitlines()[0] if text else ""
        if not sys.stdin.isatty():
            return None
        return click.prompt("The phone's backup password", hide_input=True, err=True)

    return BackupPassword(source)
