"""The console script imports a command's module only when that command runs (cli/main.py `LazyGroup`): every name
still resolves to its command, `--help` and shell completion still list them all, an unknown name fails as before,
and a light command leaves the web view, the device stack and the S3 backend unimported."""

import json
import subprocess
import sys

import click
from click.testing import CliRunner

from phonevault.cli.main import COMMANDS, cli

# The commands phonevault had when they were all imported at start-up: none may get lost from the map.
EVERY_COMMAND = {
    "backup", "check", "copy", "demo", "device", "devices", "diff", "emulator", "export", "extract", "find", "forget",
    "import", "init", "key", "ls", "pin", "prune", "restore", "rollback", "serve", "snapshots", "stats", "tag",
}  # fmt: skip


def test_every_command_in_the_map_resolves_to_a_click_command_of_that_name():
    assert set(COMMANDS) == EVERY_COMMAND
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert cli.list_commands(ctx) == sorted(EVERY_COMMAND)


def test_help_lists_every_command_with_its_short_help():
    r = CliRunner().invoke(cli, ["--help"], terminal_width=250)
    assert r.exit_code == 0, r.output
    listed = r.output.split("Commands:\n", 1)[1].splitlines()
    rows = {line.split()[0]: line.split(None, 1)[1] for line in listed if line.strip()}
    assert set(rows) == EVERY_COMMAND
    assert rows["extract"].startswith("Copy files out of a snapshot by domain path")
    assert rows["serve"].startswith("A local web view of the vault")


def test_an_unknown_command_fails_as_before_and_subcommands_of_lazy_groups_work():
    r = CliRunner().invoke(cli, ["nosuch"])
    assert r.exit_code == 2
    assert "Error: No such command 'nosuch'." in r.output
    for group, sub in (("key", "list"), ("emulator", "serve"), ("device", "encryption")):
        r = CliRunner().invoke(cli, [group, sub, "--help"])
        assert r.exit_code == 0, (group, sub, r.output)
        assert f"Usage: cli {group} {sub}" in r.output


def _complete(pv, words: str, cword: int, cli_env: dict[str, str]) -> list[str]:
    # The console script, as a shell runs it: click names the completion variable after the program.
    env = {**cli_env, "_PHONEVAULT_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    r = pv(env=env)
    assert r.returncode == 0, r.stderr
    return [line.split(",", 1)[1] for line in r.stdout.splitlines()]


def test_shell_completion_completes_command_names_and_a_lazy_commands_options(pv, cli_env):
    assert _complete(pv, "phonevault ex", 1, cli_env) == ["export", "extract"]
    assert "--to" in _complete(pv, "phonevault extract x y --t", 4, cli_env)


# Run in a fresh interpreter: pytest's own process has imported every module already.
_ONE_LIGHT_COMMAND = """
import json, sys
from click.testing import CliRunner
import phonevault.cli.main as m
r = CliRunner().invoke(m.cli, ["snapshots", "--json"])
print(json.dumps({"exit": r.exit_code, "output": r.output, "modules": sorted(sys.modules)}))
"""


def test_a_light_command_imports_neither_the_web_view_nor_the_device_stack_nor_s3(cli_env, tmp_path):
    assert CliRunner().invoke(cli, ["init"], env=cli_env).exit_code == 0
    r = subprocess.run([sys.executable, "-c", _ONE_LIGHT_COMMAND], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ran = json.loads(r.stdout)
    assert ran["exit"] == 0, ran["output"]
    assert json.loads(ran["output"]) == []  # it really ran against the vault: no snapshots yet
    modules = set(ran["modules"])
    assert "phonevault.cli.snapshot_cmds" in modules
    unwanted = {
        "phonevault.cli.web",
        "phonevault.cli.web.command",
        "phonevault.cli.device_cmds",
        "phonevault.cli.encryption_cmds",
        "phonevault.cli.copy_cmd",
        "phonevault.cli.import_cmd",
        "phonevault.cli.demo",
        "phonevault.store.backends.s3",
        "pymobiledevice3",
    }
    assert not modules & unwanted, modules & unwanted
