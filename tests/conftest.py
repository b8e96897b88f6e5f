"""Shared fixtures: real vaults in tmp_path (real files, real LMDB), synthetic phones, and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from tests.seaweed import seaweed  # noqa: F401  (the session fixture: a real SeaweedFS, started on first use)

settings.register_profile(
    "phonevault", deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile("phonevault")

FAST_SCRYPT = 2**10  # tests only: the KDF cost is a parameter stored in the key file, not a format change
PASSWORD = "correct horse battery staple"


def js(r: subprocess.CompletedProcess) -> object:
    """A CLI run's --json output, once it exited 0 (else its exit code, stdout and stderr)."""
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repository]:
    made: list[Repository] = []

    def make(name: str = "vault", password: str = PASSWORD) -> Repository:
        repo = Repository.init(
            LocalBackend(tmp_path / name), password, scrypt_n=FAST_SCRYPT, cache_root=tmp_path / "cache"
        )
        made.append(repo)
        return repo

    yield make
    for r in made:
        try:
            r.close()
        except Exception:
            pass


@pytest.fixture
def repo(make_repo) -> Repository:
    return make_repo()


def reopen(repo: Repository, cache_root: Path | None = None, password: str = PASSWORD) -> Repository:
    root = cache_root or repo.cache.path.parent
    return Repository.open(LocalBackend(Path(repo.backend.location)), password, cache_root=root)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHONEVAULT")}
    env.update(
        PHONEVAULT_PASSWORD=PASSWORD,
        PHONEVAULT_REPO=str(tmp_path / "cli-vault"),
        PHONEVAULT_CACHE_DIR=str(tmp_path / "cli-cache"),
        HOME=str(tmp_path / "home"),
        COLUMNS="250",
    )
    return env


@pytest.fixture
def pv(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """Run the real `phonevault` console script."""

    def run(*args: str, env: dict | None = None, check: bool | None = None, **kw) -> subprocess.CompletedProcess:
        exe = Path(sys.executable).with_name("phonevault")
        r = subprocess.run([str(exe), *args], env=env or cli_env, capture_output=True, text=True, **kw)
        if check:
            assert r.returncode == 0, f"phonevault {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    return run
