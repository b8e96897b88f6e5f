"""A second password's key file, damaged: `check` names it (nothing else would: the vault opens with the first),
and `key remove` takes it away, never the key the command was opened with."""

import json
from pathlib import Path

from tests.cli.test_cli import one_error_line


def test_a_damaged_second_key_is_named_by_check_and_removed(pv, cli_env):
    pv("init", check=True)
    added = pv("key", "add", env=dict(cli_env, PHONEVAULT_NEW_PASSWORD="second password"), check=True)
    second = added.stdout.split()[-1]
    keys = {k["id"]: k["current"] for k in json.loads(pv("key", "list", "--json", check=True).stdout)}
    first = next(k for k, current in keys.items() if current)
    path = Path(cli_env["PHONEVAULT_REPO"]) / "keys" / second
    path.write_text(path.read_text().replace('"scrypt"', '"scryqt"'))

    r = pv("check")
    assert r.returncode == 1 and f"keys/{second}" in r.stderr and f"key remove {second}" in r.stderr, r.stderr
    one_error_line(pv("key", "remove", first[:8]), 1, "the one this password opened", "key passwd")
    one_error_line(pv("key", "remove", "zzzz"), 1, "no key of this vault starts with it")
    assert pv("key", "remove", second[:8], check=True).stdout.strip() == f"removed key {second}"
    assert [k["id"] for k in json.loads(pv("key", "list", "--json", check=True).stdout)] == [first]
    assert json.loads(pv("check", "--json", check=True).stdout)["ok"]
