"""``ober sync``: whitelists from hostlists, names resolved at run time, applied like any config change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ober.cli import main
from ober.config import load_config
from tests.conftest import DATA, SECRETS, require

CONFIG = "/opt/ober/etc/ober.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    node = tmp_path / "root"
    (node / "opt/ober/etc").mkdir(parents=True)
    shutil.copy(DATA / "node.yaml", node / CONFIG.lstrip("/"))
    secrets = tmp_path / "login"
    secrets.write_text(yaml.safe_dump(SECRETS))
    secrets.chmod(0o600)
    return node


def sync(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    secrets = root.parent / "login"
    status = main(["sync", "-c", CONFIG, "--root", str(root), "--secrets", str(secrets), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_hostlists_and_networks_land_in_haproxy(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    status, _, err = sync(capsys, root, "--frontend-http", "198.18.0.[1-3], 100.64.10.0/24", "--backend-http", "")
    assert status == 0, err
    lines = (root / "opt/ober/etc/whitelist/frontend-http.lst").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "198.18.0.1",
        "198.18.0.2",
        "198.18.0.3",
        "100.64.10.0/24",
    ]
    cfg = (root / "opt/ober/etc/haproxy.cfg").read_text()
    assert "tcp-request connection reject unless { src -f /opt/ober/etc/whitelist/frontend-http.lst }" in cfg
    config = load_config(root / CONFIG.lstrip("/"))
    assert config.whitelists.backend_http == ()
    assert config.whitelists.routers == ("100.64.0.1", "100.64.0.2")  # not given: unchanged


def test_names_resolve_at_run_time(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    status, _, err = sync(capsys, root, "--backend-http", "localhost")
    assert status == 0, err
    assert "127.0.0.1" in (root / "opt/ober/etc/whitelist/backend-http.lst").read_text()
    # The name stays in ober.yaml, so the next sync resolves it again.
    assert load_config(root / CONFIG.lstrip("/")).whitelists.backend_http == ("localhost",)


def test_unresolvable_name_changes_nothing(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    status, _, err = sync(capsys, root, "--frontend-http", "client01.invalid")
    assert status == 1 and "'client01.invalid' does not resolve" in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_bad_hostlist_and_no_terminal(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    status, _, err = sync(capsys, root, "--routers", "rtr[1-")
    assert status == 1 and "whitelists.routers: bad hostlist" in err
    status, _, err = sync(capsys, root)
    assert status == 1 and "no terminal to ask on" in err
