"""Commands that only read the vault hold a read-only handle (cli/context.py `with_repo(readonly=...)`, through
store/backends/readonly.py): a slip in one of them fails loudly instead of changing the vault."""

import json

import click
from click.testing import CliRunner

from phonevault.cli.context import with_repo
from phonevault.sync.emulator.phone import SyntheticPhone
from tests.conftest import PASSWORD
from tests.sync.test_mobilesync import tree_digest


def test_every_reading_command_leaves_the_vault_as_it_was(pv, cli_env, tmp_path):
    phone = SyntheticPhone(seed=41, size=6 << 20)
    src = tmp_path / "Backup"
    phone.write_backup(src, day=0)
    pv("init", check=True)
    pv("import", str(src), check=True)
    phone.write_backup(src, day=1)
    pv("import", str(src), check=True)
    vault = tmp_path / "cli-vault"
    before = tree_digest(vault)
    snaps = json.loads(pv("snapshots", "--json", check=True).stdout)
    a, b = snaps[0]["id"], snaps[1]["id"]
    photo = next(
        row["path"]
        for row in json.loads(pv("diff", a, b, "--json", check=True).stdout)["changes"]
        if row["path"].startswith("CameraRollDomain/") and row["change"] != "removed"
    )
    for args in (
        ["devices", "--json"],
        ["snapshots", "--all"],
        ["ls", b, "CameraRollDomain"],
        ["diff", a, b, "--stat"],
        ["extract", b, photo, "--to", str(tmp_path / "out")],
        ["stats"],
        ["check", "--read-data"],
        ["key", "list"],
        ["forget", "--keep-last", "1", "--dry-run"],
    ):
        pv(*args, check=True)
    assert tree_digest(vault) == before  # no object added, removed, rewritten or even touched
    assert (tmp_path / "out" / photo).is_file()


def test_a_reading_command_that_tries_to_write_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    vault = tmp_path / "v"
    monkeypatch.setenv("PHONEVAULT_PASSWORD", PASSWORD)
    monkeypatch.setenv("PHONEVAULT_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    from phonevault.cli.repo_cmds import init

    assert runner.invoke(init, ["--repo", str(vault)]).exit_code == 0
    before = tree_digest(vault)

    @click.command()
    @with_repo(readonly=True)
    def slip(repo) -> None:
        repo.backend.put("snapshots/oops", b"a reading command should never do this")

    @click.command()
    @click.option("--write", is_flag=True)
    @with_repo(readonly=lambda options: not options["write"])
    def maybe(repo, write: bool) -> None:
        repo.backend.put("probe", b"x")

    refused = runner.invoke(slip, ["--repo", str(vault)])
    assert "opened read-only; refusing to write snapshots/oops" in str(refused.exception)
    assert "opened read-only" in str(runner.invoke(maybe, ["--repo", str(vault)]).exception)
    assert tree_digest(vault) == before
    assert runner.invoke(maybe, ["--repo", str(vault), "--write"]).exit_code == 0
    assert (vault / "probe").read_bytes() == b"x"
