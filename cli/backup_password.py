"""Where browsing commands get the phone's backup password (for snapshots the phone encrypted).

The passwords at hand, in order: `--backup-password PASSWORD` (repeatable: a diff across a password change needs
both; visible in the shell's history and to `ps`, for scripts that accept that), else `PHONEVAULT_BACKUP_PASSWORD`,
else the first line of the file `PHONEVAULT_BACKUP_PASSWORD_FILE`. With none of them, a prompt on the terminal, once
for each keybag the command meets. Nothing is looked for until an encrypted snapshot is actually read, so `ls` of a
plain one never prompts; with no password and no terminal, reading an encrypted snapshot is BackupPasswordNeeded
(one line, exit 1). A password at hand that opens no keybag is WrongBackupPassword (exit 12), never a prompt.
"""

from __future__ import annotations

import os
import sys

import click

from phonevault.sync.encrypted import BackupPassword

from .context import secret_from_env

backup_password_option = click.option(
    "--backup-password",
    "backup_password",
    metavar="PASSWORD",
    multiple=True,
    help="The phone's backup password, for snapshots it encrypted; repeat it for backups made before and after a "
    "password change (else $PHONEVAULT_BACKUP_PASSWORD, $PHONEVAULT_BACKUP_PASSWORD_FILE, or a prompt; given "
    "here it lands in your shell history).",
)


store_decrypted_option = click.option(
    "--store-decrypted",
    is_flag=True,
    help="For a backup the phone encrypted: store each file's plaintext plus its own key instead of the ciphertext, "
    "so it deduplicates across full backups, password changes and plain backups (export encrypts it again, bit "
    "for bit as the phone sent it; ls/diff/extract need no backup password then). Off by default because the "
    "vault's password then reads what the phone's backup password protected (the keychain's items excepted: "
    "they stay wrapped by the keybag). Needs the backup password once, now.",
)


def password_from(given: tuple[str, ...] | str | None) -> BackupPassword:
    """A BackupPassword that looks for the password only when an encrypted snapshot needs it."""
    given = (given,) if isinstance(given, str) else tuple(given or ())

    def at_hand() -> list[str]:
        if given:
            return list(given)
        pw = secret_from_env("PHONEVAULT_BACKUP_PASSWORD")
        return [] if pw is None else [pw]

    def ask(snapshot: str) -> str | None:
        if not sys.stdin.isatty():
            return None
        return click.prompt(f"The phone's backup password (snapshot {snapshot})", hide_input=True, err=True)

    # A password given in advance is what a script means: one that opens nothing is an error, not a prompt.
    fixed = (
        bool(given)
        or "PHONEVAULT_BACKUP_PASSWORD" in os.environ
        or bool(os.environ.get("PHONEVAULT_BACKUP_PASSWORD_FILE"))
    )
    return BackupPassword(at_hand, None if fixed else ask)
