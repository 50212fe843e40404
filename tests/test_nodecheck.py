"""``ober fleet render --check-on NODE``: ``haproxy -c`` by a node's HAProxy, and saying which HAProxy checked.

The node here is this machine reached without SSH (its own HAProxy 2.6 plays the node's): the script that runs on
a node runs for real, scratch directory, tar stream and all. tests/test_install_lab.py checks on a lab node over
SSH, whose HAProxy is 3.0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import ober.validate
from ober.cli import main
from ober.cli.fleet import version_notes
from ober.errors import RenderError
from ober.inventory import load_inventory
from ober.remote.nodecheck import check_haproxy_on
from ober.validate import Tool
from tests.conftest import REPO, SECRETS, require
from tests.test_fleet_bootstrap import LocalNode

EXAMPLE = REPO / "inventory" / "example.yaml"


@pytest.fixture(autouse=True)
def _needs_haproxy() -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")


def scratch_dirs() -> set[Path]:
    return set(Path("/tmp").glob("ober-check-*"))


def test_a_node_checks_the_files_rendered_here_and_leaves_nothing_behind() -> None:
    node = load_inventory(EXAMPLE).nodes[0]
    before = scratch_dirs()
    result = check_haproxy_on(LocalNode(), "node01", node.config, SECRETS)
    assert result.host == "node01" and result.version is not None and result.version.startswith("2.6")
    # This "node" has no certificate of its own, nor ober's users (HAProxy looks them up): nobody stands in.
    assert result.placeholders == [
        "/opt/ober/etc/certs/s3.pem",
        "users ober-haproxy, ober-bgp (checked as nobody)",
    ]
    assert scratch_dirs() == before


def test_the_nodes_own_certificate_is_checked_and_a_bad_one_rejected(tmp_path: Path) -> None:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    broken = tmp_path / "s3.pem"
    broken.write_text("garbage\n")
    data["config"]["certificates"]["pem"] = str(broken)
    inventory = tmp_path / "site.yaml"
    inventory.write_text(yaml.safe_dump(data))
    node = load_inventory(inventory).nodes[0]
    before = scratch_dirs()
    with pytest.raises(RenderError) as raised:
        check_haproxy_on(LocalNode(), "node01", node.config, SECRETS)
    assert raised.value.message.startswith("haproxy -c on node01 (HAProxy 2.6")
    assert str(broken) in raised.value.message  # the alert names the node's path, not the scratch copy
    assert "ober-check-" not in raised.value.message
    assert scratch_dirs() == before


def test_render_says_which_haproxy_checked_and_warns_about_another_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    login = tmp_path / "login"
    login.write_text(yaml.safe_dump(SECRETS))
    login.chmod(0o600)
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["config"]["haproxy"] = {"version": "3.0"}
    inventory = tmp_path / "site.yaml"
    inventory.write_text(yaml.safe_dump(data))
    argv = ["fleet", "render", "-i", str(inventory), "--secrets", str(login), "-o", str(tmp_path / "out")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "checked by haproxy -c here (HAProxy 2.6" in captured.out
    assert "the nodes run 3.0 (haproxy.version)" in captured.err and "--check-on NODE" in captured.err
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["checked_by"]["host"] == "here" and doc["checked_by"]["haproxy"].startswith("2.6")
    # Usage: --check-on names one node of the inventory, and contradicts --no-check.
    assert main([*argv, "--check-on", "node09"]) == 1
    assert "--check-on node09: no such node" in capsys.readouterr().err
    assert main([*argv, "--check-on", "node01", "--no-check"]) == 2


def test_without_haproxy_here_the_error_offers_the_check_on_a_node(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    login = tmp_path / "login"
    login.write_text(yaml.safe_dump(SECRETS))
    login.chmod(0o600)
    real = ober.validate.local_tool
    missing = Tool((str(tmp_path / "no-haproxy-here"),))
    monkeypatch.setattr(ober.validate, "local_tool", lambda name: missing if name == "haproxy" else real(name))
    argv = ["fleet", "render", "-i", str(EXAMPLE), "--secrets", str(login), "-o", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "haproxy is not installed here" in err and "--check-on NODE" in err and "--no-check" in err
    assert not (tmp_path / "out").exists()


def test_version_notes() -> None:
    assert version_notes("2.6.12", ["2.6", "2.6"]) == []
    assert version_notes(None, ["3.0"]) == []
    (note,) = version_notes("2.6.12", ["3.0", "2.6", "3.2"])
    assert "HAProxy 2.6, but the nodes run 3.0, 3.2" in note
