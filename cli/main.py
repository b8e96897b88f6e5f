"""phonevault command line: a thin skin over phonevault.store and phonevault.sync.

Each command group lives in its own module; this one only names them and maps errors to exit codes. A command's
module is imported only when that command is resolved (``COMMANDS`` maps each name to ``"module:attr"`` under
phonevault.cli), so ``phonevault extract`` does not pay for importing the web view, the S3 backends or the device
stack: importing them all cost about as much CPU as a small command's own work. ``phonevault --help`` and shell
completion of command names resolve every command (click asks each for its short help and whether it is hidden), so
they import them all, as before.
"""

from __future__ import annotations

import importlib

import click

from .context import run_cli

# name -> "module:attr" relative to phonevault.cli. A new command is one line here; tests/cli/test_lazy_commands.py
# checks that each entry resolves to a click command of that name.
COMMANDS: dict[str, str] = {
    "init": "repo_cmds:init",
    "key": "repo_cmds:key",
    "check": "repo_cmds:check",
    "stats": "repo_cmds:stats",
    "prune": "repo_cmds:prune",
    "import": "import_cmd:import_",
    "devices": "snapshot_cmds:devices",
    "snapshots": "snapshot_cmds:snapshots",
    "ls": "snapshot_cmds:ls",
    "diff": "snapshot_cmds:diff",
    "extract": "snapshot_cmds:extract",
    "export": "snapshot_cmds:export",
    "rollback": "snapshot_cmds:rollback",
    "tag": "snapshot_cmds:tag",
    "pin": "snapshot_cmds:pin",
    "forget": "forget_cmd:forget",
    "backup": "device_cmds:backup",
    "restore": "device_cmds:restore",
    "emulator": "device_cmds:emulator",
    "device": "encryption_cmds:device",
    "demo": "demo:demo",
    "serve": "web.command:serve",
    "find": "find_cmd:find",
    "copy": "copy_cmd:copy",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first lookup (click's documented lazy-loading pattern)."""

    def __init__(self, *args: object, lazy_commands: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # Unknown names fall through to click, which returns None and so reports "No such command" as before.
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, cmd_name: str) -> click.Command:
        module_name, attr = self.lazy_commands[cmd_name].split(":")
        command = getattr(importlib.import_module(f".{module_name}", __package__), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="phonevault")
def cli() -> None:
    """phonevault: every dated version of every iPhone and iPad, deduplicated and encrypted."""


def main() -> None:
    run_cli(cli)
