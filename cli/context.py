"""Where the CLI finds the repository and its password, and how it turns errors into one line and an exit code.

Repository: `--repo PATH` or `PHONEVAULT_REPO`, else `<user data dir>/phonevault/vault`.
Password: `PHONEVAULT_PASSWORD`, else the first line of `PHONEVAULT_PASSWORD_FILE`, else a prompt on the terminal.
Exit codes follow restic: 1 failed, 3 some source data unreadable, 10 no repository, 11 another writer won,
12 wrong password, 130 interrupted. Tracebacks only for bugs.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
import lmdb
import platformdirs

from phonevault.store.backends import open_backend
from phonevault.store.backends.readonly import ReadOnlyBackend
from phonevault.store.errors import PhonevaultError, RepositoryNotFound
from phonevault.store.repository import Repository


def default_repo() -> Path:
    return Path(platformdirs.user_data_dir("phonevault")) / "vault"


def repo_path(value: str | None) -> Path | str:
    raw = value or os.environ.get("PHONEVAULT_REPO") or default_repo()
    if str(raw)[:3].lower() == "s3:":
        return str(raw)  # a URL, not a path: Path would fold its "//"
    return Path(raw).expanduser()


def secret_from_env(name: str) -> str | None:
    """A password from the environment: $NAME, else the first line of the file named by $NAME_FILE (one clear line
    if it cannot be read), else None. Every password phonevault takes is found this way (the vault's, the copy
    target's, the phone's backup password); none of them has to be on a command line."""
    if (value := os.environ.get(name)) is not None:
        return value
    if path := os.environ.get(f"{name}_FILE"):
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise PhonevaultError(f"{name}_FILE {path}: {getattr(e, 'strerror', None) or e}") from None
        return text.splitlines()[0] if text else ""
    return None


def get_password(*, confirm: bool = False, what: str = "vault password") -> str:
    if (pw := secret_from_env("PHONEVAULT_PASSWORD")) is not None:
        return pw
    if not sys.stdin.isatty():
        raise PhonevaultError("no password: set PHONEVAULT_PASSWORD or PHONEVAULT_PASSWORD_FILE, or run in a terminal")
    return click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm)


def open_repo(path: Path | str, *, readonly: bool = False) -> Repository:
    """Open the vault at `path`; `readonly` wraps its backend so that any write is refused (ReadOnlyVault) before
    it reaches the vault."""
    if isinstance(path, Path) and not path.exists():
        raise RepositoryNotFound(str(path), "does not exist (create it with `phonevault init`)")
    if isinstance(path, Path) and not path.is_dir():
        raise RepositoryNotFound(str(path), "is not a directory")
    backend = open_backend(str(path))
    return Repository.open(ReadOnlyBackend(backend) if readonly else backend, get_password())


repo_option = click.option(
    "--repo",
    "-r",
    "repo_arg",
    metavar="PATH",
    help="Vault location (default: $PHONEVAULT_REPO or the user data dir).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")


def with_repo(fn: Callable | None = None, *, readonly: bool | Callable[[dict], bool] = False) -> Callable:
    """Add --repo, open the repository (asking for the password), pass it as `repo`, close it afterwards, and exit
    non-zero if reading met damaged objects (after printing what was found).

    A command that only reads says `readonly=True` (or a function of its options, as `check` without
    `--repair-index`): its vault is opened through ReadOnlyBackend, so a bug in it cannot change the vault."""
    if fn is None:
        return functools.partial(with_repo, readonly=readonly)

    @repo_option
    @functools.wraps(fn)
    def wrapper(repo_arg: str | None, **kwargs):
        reads_only = readonly(kwargs) if callable(readonly) else readonly
        repo = open_repo(repo_path(repo_arg), readonly=reads_only)
        try:
            result = fn(repo=repo, **kwargs)
        finally:
            warnings, notes = list(repo.warnings), list(dict.fromkeys(repo.notes))
            repo.close()
        for n in notes:  # harmless: a damaged local cache was rebuilt from the vault
            click.echo(f"note: {n}", err=True)
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
        if warnings:
            sys.exit(1)
        return result

    return wrapper


def quiet_libraries() -> None:
    """Libraries (pymobiledevice3 above all) log warnings that phonevault turns into its own one-line errors; left
    alone, Python's last-resort handler prints them beside ours. PHONEVAULT_DEBUG=1 shows every log record."""
    if os.environ.get("PHONEVAULT_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:
        logging.getLogger().addHandler(logging.NullHandler())


def run_cli(main: click.Group) -> None:
    quiet_libraries()
    try:
        main.main(standalone_mode=False)
    except PhonevaultError as e:
        click.echo(f"phonevault: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("phonevault: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("phonevault: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as e:
        # The machine, not phonevault: a full disk, a permission, an I/O error. Nothing is committed before its
        # data is durable, so the vault is as it was; say what and where in one line.
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"phonevault: {where}{e.strerror or e}{_ENOSPC_HINT if e.errno in _FULL else ''}", err=True)
        sys.exit(1)
    except lmdb.Error as e:
        click.echo(f"phonevault: the local cache failed ({e}); the vault is not affected", err=True)
        sys.exit(1)


_FULL = (errno.ENOSPC, errno.EDQUOT)
_ENOSPC_HINT = " (nothing partial was committed; free some space and run it again: stored data is reused)"
