"""``ober config --set/--from`` against a staging root: diff, apply, backup, manifest, rollback."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ober.apply import KEEP_BACKUPS, Change, apply, diff, plan
from ober.cli import main
from ober.config import NodeConfig, load_config
from ober.configure import edited, parse_assignment
from ober.errors import ConfigError, OberError
from ober.render import render_node
from ober.services import CERTS_WATCH, reload_for
from tests.conftest import DATA, SECRETS, require

CONFIG = "/opt/ober/etc/ober.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    node = tmp_path / "root"
    target = node / CONFIG.lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copy(DATA / "node.yaml", target)
    return node


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "login"
    path.write_text(yaml.safe_dump(SECRETS))
    path.chmod(0o600)
    return path


def ober(capsys: pytest.CaptureFixture[str], root: Path, secrets: Path, *args: str) -> tuple[int, str, str]:
    status = main(["config", "-c", CONFIG, "--root", str(root), "--secrets", str(secrets), *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_dry_run_shows_diff_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], root: Path, secrets_file: Path
) -> None:
    before = sorted(p for p in root.rglob("*"))
    status, out, err = ober(capsys, root, secrets_file, "--set", "health.rise=4", "--dry-run")
    assert status == 0, err
    assert "+++ /opt/ober/etc/haproxy.cfg" in out and "dry run: nothing written" in out
    assert sorted(p for p in root.rglob("*")) == before
    assert SECRETS["bgp_md5"] not in out  # the ExaBGP config changes too, but secret files are never shown
    assert "(secret file: contents not shown" in out


def test_apply_writes_everything_then_second_run_changes_nothing(
    capsys: pytest.CaptureFixture[str], root: Path, secrets_file: Path
) -> None:
    status, out, err = ober(capsys, root, secrets_file, "--set", "health.rise=4", "--set", "haproxy.maxconn=5000")
    assert status == 0, err
    assert "services: none (--root)" in out
    assert load_config(root / CONFIG.lstrip("/")).health.rise == 4
    cfg = (root / "opt/ober/etc/haproxy.cfg").read_text()
    assert "maxconn 5000" in cfg
    assert stat.S_IMODE((root / "opt/ober/etc/exabgp.conf").stat().st_mode) == 0o600
    manifest = json.loads((root / "opt/ober/etc/.ober-manifest.json").read_text())
    assert "/etc/systemd/system/ober-http.service" in manifest
    status, out, _ = ober(capsys, root, secrets_file, "--set", "health.rise=4")
    assert status == 0 and "nothing to change" in out


def test_switching_network_manager_removes_the_old_files(
    capsys: pytest.CaptureFixture[str], root: Path, secrets_file: Path
) -> None:
    assert ober(capsys, root, secrets_file, "--set", "network.manager=netplan")[0] == 0
    assert (root / "etc/netplan/60-ober0.yaml").exists()
    status, out, _ = ober(capsys, root, secrets_file, "--set", "network.manager=networkd", "--json")
    changes = {c["path"]: c["change"] for c in json.loads(out)["changes"]}
    assert status == 0 and changes["/etc/netplan/60-ober0.yaml"] == "remove"
    assert not (root / "etc/netplan/60-ober0.yaml").exists()
    assert (root / "etc/systemd/network/60-ober0.netdev").exists()


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("bgp.hold_time=1", "bgp.hold_time: 1 is out of range"),
        ("vips[0].backend=nope", "vips[0].backend: no backend group named 'nope'"),
        ("bgp.local_ass=1", "bgp.local_ass: unknown key"),
        ("vips[7].address=198.51.100.9", "there is no item [7]"),
        ("no equals sign", "expected key=value"),
    ],
)
def test_invalid_value_leaves_node_untouched(
    capsys: pytest.CaptureFixture[str], root: Path, secrets_file: Path, assignment: str, expected: str
) -> None:
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    status, _, err = ober(capsys, root, secrets_file, "--set", assignment)
    assert status in (1, 2) and expected in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_config_haproxy_rejects_is_never_swapped_in(
    capsys: pytest.CaptureFixture[str], root: Path, secrets_file: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    status, _, err = ober(capsys, root, secrets_file, "--set", f"certificates.pem={broken}")
    assert status == 1 and "haproxy -c rejected" in err
    assert load_config(root / CONFIG.lstrip("/")).certificates.pem == "/opt/ober/etc/certs/s3.pem"
    assert not (root / "opt/ober/etc/haproxy.cfg").exists()


def test_failed_verify_rolls_back_every_file(root: Path, tmp_path: Path) -> None:
    config = load_config(DATA / "node.yaml")
    first = render_node(config, SECRETS)
    owned = [f.path for f in first.files]
    apply(
        plan(first, root, config.install_path),
        root,
        config.install_path,
        owned,
        reload=lambda: None,
        verify=lambda: None,
    )
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "backup" not in p.parts}
    changed = load_config(DATA / "node.yaml")
    second = render_node(dataclasses.replace(changed, kernel_profile="none"), SECRETS)
    reloads: list[str] = []

    def verify() -> None:
        raise OberError("HAProxy does not answer after the reload")

    with pytest.raises(OberError) as error:
        apply(
            plan(second, root, config.install_path),
            root,
            config.install_path,
            owned,
            reload=lambda: reloads.append("reload"),
            verify=verify,
        )
    assert "rolled back to the previous files" in error.value.message
    assert reloads == ["reload", "reload"]  # once with the new files, once after restoring the old ones
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "backup" not in p.parts}
    assert after == before


def test_backups_are_pruned_and_never_keep_a_rotated_secret(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = load_config(DATA / "node.yaml")
    backups = root / "opt/ober/backup"
    used: list[str] = []
    for round_ in range(KEEP_BACKUPS + 3):
        # Each round rotates the MD5 password and changes a file without secrets (HAProxy's maxconn).
        secret = f"rotated-{round_}-Pa55"
        used.append(secret)
        changed = dataclasses.replace(config, haproxy=dataclasses.replace(config.haproxy, maxconn=1000 + round_))
        rendered = render_node(changed, {**SECRETS, "bgp_md5": secret})
        owned = [f.path for f in rendered.files]
        result = apply(
            plan(rendered, root, config.install_path),
            root,
            config.install_path,
            owned,
            reload=lambda: None,
            verify=lambda: None,
        )
        assert round_ == 0 or (result.backup is not None and result.backup.parent == backups)
    kept = sorted(path for path in backups.iterdir())
    assert len(kept) == KEEP_BACKUPS  # every apply but the first made one (haproxy.cfg changed each time)
    # The newest are kept: each holds the haproxy.cfg its apply replaced.
    held = [re.search(r"maxconn (\d+)", (b / "opt/ober/etc/haproxy.cfg").read_text()) for b in kept]
    assert [int(m.group(1)) for m in held if m] == list(range(1000 + 8 - KEEP_BACKUPS - 1, 1000 + 7))
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    copies = [path for path in backups.rglob("*") if path.is_file()]
    # What is left is for reading and rolling back by hand: haproxy.cfg is there, no password is.
    assert any(path.name == "haproxy.cfg" for path in copies)
    for path in copies:
        text = path.read_text()
        assert not any(secret in text for secret in used), path
        assert SECRETS["stats_password"] not in text, path
    # The live files hold the newest secret, mode 600.
    live = root / "opt/ober/etc/exabgp.conf"
    assert used[-1] in live.read_text() and stat.S_IMODE(live.stat().st_mode) == 0o600


def test_diff_hides_secret_files() -> None:
    config = load_config(DATA / "node.yaml")
    exabgp = render_node(config, SECRETS).file("/opt/ober/etc/exabgp.conf")
    text = diff([Change(exabgp.path, None, exabgp)])
    assert SECRETS["bgp_md5"] not in text and "contents not shown" in text


def test_edits() -> None:
    assert parse_assignment("vips[1].address=198.51.100.9") == (["vips", 1, "address"], "198.51.100.9")
    assert parse_assignment("health.rise=3") == (["health", "rise"], 3)
    data = edited({"health": {"rise": 2}}, None, ["health.fall=5", "stats.auth.user=ops"])
    assert data == {"health": {"rise": 2, "fall": 5}, "stats": {"auth": {"user": "ops"}}}
    with pytest.raises(ConfigError):
        edited({"health": 3}, None, ["health.rise=1"])


def test_a_changed_certificate_watcher_is_started_on_a_serving_node(make_config: Callable[..., NodeConfig]) -> None:
    config = make_config()
    assert reload_for(config, ["/etc/systemd/system/ober-certs.path"]) == ["daemon-reload", CERTS_WATCH]
    assert CERTS_WATCH not in reload_for(config, ["/etc/systemd/system/ober-bgp.service"])
