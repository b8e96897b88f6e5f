"""A one-photo extract's start-up: the command imports what reading one file of a cached Manifest.db catalog
needs, not the readers of the older file lists, SQLite's VFS over a sealed image, the writer behind files stored
decrypted, diff, the exports, check, rich or the chunker's FastCDC (each was ~5-15 ms of the one-photo extract's ~0.3 CPU s). Run in a fresh
interpreter: pytest's own process has imported every module already."""

from __future__ import annotations

import json
import subprocess
import sys

from phonevault.sync.catalogshards import phone_file_id
from phonevault.sync.emulator.phone import SyntheticPhone

_EXTRACT = """
import json, sys
from click.testing import CliRunner
import phonevault.cli.main as m
r = CliRunner().invoke(m.cli, ["extract", "latest", sys.argv[1], "--to", sys.argv[2]])
print(json.dumps({"exit": r.exit_code, "output": r.output, "modules": sorted(sys.modules)}))
"""


def test_extracting_one_photo_imports_only_the_cached_catalogs_reader(pv, cli_env, tmp_path):
    dev = SyntheticPhone(seed=11, size=4 << 20).write_backup(tmp_path / "src")
    pv("init", check=True)
    pv("import", str(dev), check=True)
    photo = json.loads(pv("find", "--json", "IMG_", check=True).stdout)[0]["path"]
    run = [sys.executable, "-c", _EXTRACT, photo, str(tmp_path / "out")]
    r = subprocess.run(run, env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ran = json.loads(r.stdout)
    assert ran["exit"] == 0, ran["output"]
    domain, rel = photo.split("/", 1)
    fid = phone_file_id(domain, rel)
    assert (tmp_path / "out" / photo).read_bytes() == (dev / fid[:2] / fid).read_bytes()
    modules = set(ran["modules"])
    assert "phonevault.sync.extract" in modules
    unwanted = {
        "phonevault.sync.sealeddb",
        "apsw",
        "phonevault.sync.mbdb",
        "phonevault.sync.mdinfo",
        "phonevault.sync.decrypted",
        "phonevault.store.writer",
        "phonevault.sync.diff",
        "phonevault.sync.export",
        "phonevault.sync.decrypt_export",
        "phonevault.sync.writeout",
        "phonevault.store.check",
        "rich",  # cli/render.py makes its consoles on first use
        "pyfastcdc",  # only a writer cuts chunks
    }
    assert not modules & unwanted, modules & unwanted
