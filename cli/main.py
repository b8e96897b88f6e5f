"""phonevault command line: a thin skin over phonevault.store and phonevault.sync.

Each command group lives in its own module; this one only assembles them and maps errors to exit codes.
"""

from __future__ import annotations

import click

from . import device_cmds, encryption_cmds, repo_cmds, snapshot_cmds
from .context import run_cli
from .copy_cmd import copy
from .demo import demo
from .find_cmd import find
from .forget_cmd import forget
from .import_cmd import import_
from .web.command import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phonevault")
def cli() -> None:
    """phonevault: every dated version of every iPhone and iPad, deduplicated and encrypted."""


for command in (
    repo_cmds.init,
    repo_cmds.key,
    repo_cmds.check,
    repo_cmds.stats,
    repo_cmds.prune,
    import_,
    snapshot_cmds.devices,
    snapshot_cmds.snapshots,
    snapshot_cmds.ls,
    snapshot_cmds.diff,
    snapshot_cmds.extract,
    snapshot_cmds.export,
    snapshot_cmds.rollback,
    snapshot_cmds.tag,
    snapshot_cmds.pin,
    forget,
    device_cmds.backup,
    device_cmds.restore,
    device_cmds.emulator,
    encryption_cmds.device,
    demo,
    serve,
    find,
    copy,
):
    cli.add_command(command)


def main() -> None:
    run_cli(cli)
