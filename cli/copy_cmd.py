"""`phonevault copy --to LOCATION [SNAPSHOT…]`: snapshots the target vault lacks, re-sealed under its keys.

The source (--repo) is opened read-only; the target has its own password: PHONEVAULT_TO_PASSWORD, else the first
line of PHONEVAULT_TO_PASSWORD_FILE, else a prompt. `--init` creates the target vault (and an S3 bucket) when there is
none, with that password. What is copied and how it resumes: store/copy.py.

Before copying, the process's allocator is told to keep freed blocks (cli/allocator.py `keep_freed_blocks`): a copy
allocates and frees one decrypted and one sealed buffer per chunk on its reader threads, and glibc by default maps
every block of 128 KiB or more afresh and unmaps it when freed, so each page of a media chunk was faulted in and
zeroed by the kernel two or three times (340 000 page faults and ~0.8 CPU s of a 600 MB copy, on the cores the S3
server needs).

When the copy is done, every object still alive is frozen out of the cyclic garbage collector (gc.freeze): the
interpreter's final collection at exit otherwise walks all of them (botocore's service model, both vaults' state:
~10⁵ objects), ~0.1 CPU s at the very end of every copy, while the target server has nothing left to do.
"""

from __future__ import annotations

import gc
import sys

import click

from phonevault.store.backends import open_backend
from phonevault.store.copy import CopiedSnapshot, copy_snapshots, plan
from phonevault.store.errors import PhonevaultError, RepositoryNotFound
from phonevault.store.refs import resolve_snapshot
from phonevault.store.repository import Repository

from .allocator import keep_freed_blocks
from .context import json_option, repo_path, secret_from_env, with_repo
from .render import emit_json, err, human, out, progress


def target_password(*, confirm: bool) -> str:
    if (pw := secret_from_env("PHONEVAULT_TO_PASSWORD")) is not None:
        return pw
    if not sys.stdin.isatty():
        raise PhonevaultError(
            "no password for the target vault: set PHONEVAULT_TO_PASSWORD or PHONEVAULT_TO_PASSWORD_FILE, or run in a "
            "terminal"
        )
    return click.prompt("Target vault password", hide_input=True, confirmation_prompt=confirm)


def open_target(location: str, *, init: bool) -> Repository:
    where = repo_path(location)
    if not isinstance(where, str) and where.exists() and not where.is_dir():
        raise PhonevaultError(f"{where}: is a file; a vault needs a folder")
    backend = open_backend(str(where), create=init)
    if backend.exists("config"):
        return Repository.open(backend, target_password(confirm=False))
    if not init:
        raise RepositoryNotFound(str(where), "no vault here (create it with `phonevault init --repo …`, or add --init)")
    repo = Repository.init(backend, target_password(confirm=True))
    err.print(f"created vault {repo.config.id} at {where}")
    return repo


def _record_json(c: CopiedSnapshot) -> dict:
    return {
        "source": c.source,
        "target": c.target or None,
        "device": c.device,
        "files": c.files,
        "size": c.size,
        "new_bytes": c.new_bytes,
    }


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--to", "to", required=True, metavar="LOCATION", help="The target vault (a folder or s3:…).")
@click.option("--init", "init", is_flag=True, help="Create the target vault if there is none.")
@json_option
@with_repo(readonly=True)
def copy(repo: Repository, snapshots: tuple[str, ...], to: str, init: bool, as_json: bool) -> None:
    """Copy snapshots (default: every one) into another vault, skipping those it already has."""
    keep_freed_blocks()
    wanted = [resolve_snapshot(repo, ref) for ref in snapshots] or None
    target = open_target(to, init=init)
    try:
        todo = plan(repo, target, wanted)
        total = sum(s.stats.size for _v, s, _there in todo)

        def told(c: CopiedSnapshot, copied: bool) -> None:
            if as_json:
                return
            if copied:
                out.print(
                    f"copied {c.source[:8]} → {c.target[:8]} ({c.device[:12]}): {c.files} files, {human(c.size)}; "
                    f"{human(c.new_bytes)} new in the target"
                )
            else:
                out.print(f"{c.source[:8]} ({c.device[:12]}): already in the target")

        with progress("copying", total or None) as update:
            result = copy_snapshots(repo, target, wanted, progress=update, on_snapshot=told)
        warnings = list(target.warnings)
    finally:
        target.close()
        gc.freeze()  # the process ends soon: see the module docstring
    if as_json:
        emit_json(
            {
                "copied": [_record_json(c) for c in result.copied],
                "present": [_record_json(c) for c in result.present],
                "new_bytes": result.new_bytes,
            }
        )
    else:
        out.print(
            f"{len(result.copied)} snapshot(s) copied, {len(result.present)} already there; "
            f"{human(result.new_bytes)} new in the target"
        )
    for w in warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    if warnings:
        sys.exit(1)
