"""The CLI, run in-process: exit codes, one-line errors, --json, and nothing written on failure."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from ober.cli import main
from tests.conftest import DATA, REPO, SECRETS, require

EXAMPLE = REPO / "inventory" / "example.yaml"


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "login"
    path.write_text(yaml.safe_dump(SECRETS))
    path.chmod(0o600)
    return path


@pytest.fixture(autouse=True)
def _needs_haproxy() -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("ober 0.1.0, HAProxy ")
    status, out, _ = run(capsys, "--json", "--version")
    info = json.loads(out)
    assert info["ober"] == "0.1.0" and set(info) == {"ober", "HAProxy", "ExaBGP"}
    assert info["HAProxy"] is not None and info["HAProxy"].startswith("2.")


def test_render_writes_checked_tree(capsys: pytest.CaptureFixture[str], tmp_path: Path, secrets_file: Path) -> None:
    out_dir = tmp_path / "out"
    status, out, err = run(
        capsys, "render", "-c", str(DATA / "node.yaml"), "-o", str(out_dir), "--secrets", str(secrets_file)
    )
    assert status == 0, err
    assert "node01: 14 files written" in out and "checked by haproxy -c" in out
    exabgp = out_dir / "opt/ober/etc/exabgp.conf"
    assert stat.S_IMODE(exabgp.stat().st_mode) == 0o600
    assert "backend be_ceph-a" in (out_dir / "opt/ober/etc/haproxy.cfg").read_text()
    # A second render replaces the first whole.
    status, out, _ = run(
        capsys, "--json", "render", "-c", str(DATA / "node.yaml"), "-o", str(out_dir), "--secrets", str(secrets_file)
    )
    doc = json.loads(out)
    assert status == 0 and doc["node"] == "node01" and len(doc["files"]) == 14 and doc["checked"] is True
    assert not any(value in out for value in SECRETS.values())


def _bad_config(tmp_path: Path, change: Any) -> Path:
    data = yaml.safe_load((DATA / "node.yaml").read_text())
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d.update(vips=[{"address": "198.51.100.10", "backend": "ceph-x"}]),
            "vips[0].backend: no backend group named 'ceph-x'",
        ),
        (lambda d: d["bgp"].update(local_ass=1), "bgp.local_ass: unknown key"),
        (lambda d: d["bgp"].update(peer_as="sixty"), "bgp.peer_as: expected a whole number, got a string"),
        (lambda d: d["backends"]["ceph-a"].update(servers="rgw[1-"), "backends.ceph-a.servers: bad hostlist"),
        (
            lambda d: d["vips"].append({"address": "198.51.100.10", "backend": "ceph-a", "name": "again"}),
            "vips[2].address: VIP 198.51.100.10 is listed twice",
        ),
        (lambda d: d["backends"].update({"x{{7*7}}": {"servers": "rgw1"}}), "backends.x{{7*7}}: name"),
        (lambda d: d["certificates"].update(pem="/etc/x.pem; rm -rf /"), "certificates.pem"),
    ],
)
def test_bad_config_is_one_line_exit_1_nothing_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secrets_file: Path, change: Any, expected: str
) -> None:
    out_dir = tmp_path / "out"
    status, _out, err = run(
        capsys, "render", "-c", str(_bad_config(tmp_path, change)), "-o", str(out_dir), "--secrets", str(secrets_file)
    )
    assert status == 1
    assert expected in err and "(fix: " in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_malformed_yaml_and_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: node01\nbgp: [unclosed\n")
    status, _, err = run(capsys, "render", "-c", str(bad), "-o", str(tmp_path / "o"))
    assert status == 1 and f"{bad}:3:1: YAML syntax error" in err
    status, _, err = run(capsys, "render", "-c", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "o"))
    assert status == 1 and "no such file" in err
    assert not (tmp_path / "o").exists()


def test_world_readable_secrets_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, secrets_file: Path) -> None:
    secrets_file.chmod(0o644)
    status, _, err = run(
        capsys, "render", "-c", str(DATA / "node.yaml"), "-o", str(tmp_path / "o"), "--secrets", str(secrets_file)
    )
    assert status == 1 and "readable by others (mode 644)" in err and f"chmod 600 {secrets_file}" in err
    assert not any(value in err for value in SECRETS.values())
    assert not (tmp_path / "o").exists()


def test_json_errors_and_verbose_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, _ = run(capsys, "--json", "render", "-c", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "o"))
    assert status == 1 and json.loads(out)["error"].endswith("no such file")
    status, _, err = run(capsys, "-v", "render", "-c", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "o"))
    assert status == 1 and "Traceback" in err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "render", "--bogus")
    assert status == 2 and "No such option '--bogus'" in err and "ober render --help" in err
    assert len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_foreign_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, secrets_file: Path
) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    status, _, err = run(
        capsys, "render", "-c", str(DATA / "node.yaml"), "-o", str(tmp_path / "home"), "--secrets", str(secrets_file)
    )
    assert status == 1 and "not written by ober render" in err
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me"


def test_fleet_inventory_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE), "--json")
    doc = json.loads(out)
    assert status == 0 and doc["site"] == "example"
    assert [n["name"] for n in doc["nodes"]] == ["node01", "node02", "node03", "node04"]
    assert doc["nodes"][3]["config"]["network"]["manager"] == "netplan"
    assert doc["nodes"][0]["config"]["bgp"]["md5_secret"] == "bgp_md5"  # a reference, never a value
    status, out, _ = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE), "node[02-03]")
    assert status == 0 and "node02" in out and "node03" in out and "node01" not in out
    status, _, err = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE), "node[07-08]")
    assert status == 1 and "TARGETS: node[07-08] not in inventory" in err


def test_fleet_render_all_or_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path, secrets_file: Path) -> None:
    out_dir = tmp_path / "out"
    status, _out, err = run(
        capsys, "fleet", "render", "-i", str(EXAMPLE), "-o", str(out_dir), "--secrets", str(secrets_file)
    )
    assert status == 0, err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["node01", "node02", "node03", "node04"]
    assert (out_dir / "node04/etc/netplan/60-ober0.yaml").exists()
    assert (out_dir / "node01/etc/systemd/network/60-ober0.netdev").exists()
    before = (out_dir / "node01/opt/ober/etc/haproxy.cfg").read_text()

    # One node whose certificate HAProxy rejects: nothing is written, the previous render stays whole.
    data = yaml.safe_load(EXAMPLE.read_text())
    broken = tmp_path / "broken.pem"
    broken.write_text("garbage\n")
    data["hosts"]["node03"] = {"config": {"certificates": {"pem": str(broken)}}}
    inventory = tmp_path / "inv.yaml"
    inventory.write_text(yaml.safe_dump(data))
    status, _, err = run(
        capsys, "fleet", "render", "-i", str(inventory), "-o", str(out_dir), "--secrets", str(secrets_file)
    )
    assert status == 1 and "haproxy -c rejected" in err
    assert (out_dir / "node01/opt/ober/etc/haproxy.cfg").read_text() == before
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["node01", "node02", "node03", "node04"]
    assert not list(tmp_path.glob(".out.*"))  # no staging directory left behind


def test_quiet_silences_tables_but_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE))
    assert status == 0 and "node01" in out
    status, out, err = run(capsys, "-q", "fleet", "inventory", "-i", str(EXAMPLE))
    assert status == 0 and out == "" and err == ""
    status, out, err = run(capsys, "-q", "fleet", "inventory", "-i", str(EXAMPLE), "nodeXX")
    assert status == 1 and out == "" and "nodeXX" in err


def test_global_options_work_after_the_subcommand_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE), "-q")
    assert status == 0 and out == "" and err == ""
    status, out, err = run(capsys, "fleet", "inventory", "-i", str(EXAMPLE), "-v")  # was: no such option
    assert status == 0 and "node01" in out, err
    status, out, _ = run(capsys, "fleet", "-q", "inventory", "-i", str(EXAMPLE))
    assert status == 0 and out == ""
    missing = ["-c", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "o")]
    status, out, _ = run(capsys, "render", *missing, "--json")
    assert status == 1 and json.loads(out)["error"].endswith("no such file")
    status, _, err = run(capsys, "render", *missing, "-vv")
    assert status == 1 and "Traceback" in err
    # Commands of plain click groups get them too.
    for argv in (("certs", "reload"), ("lab", "status"), ("fleet", "restart")):
        status, out, _ = run(capsys, *argv, "--help")
        assert status == 0 and all(flag in out for flag in ("--json", "--quiet", "--verbose")), argv


def test_fleet_init_writes_a_commented_starter_that_loads_and_renders(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    site = tmp_path / "site1"
    status, out, err = run(capsys, "fleet", "init", str(site))
    assert status == 0, err
    written = site / "site.yaml"
    text = written.read_text()
    assert f"wrote {written}" in out and "ober fleet bootstrap -i" in out and "--accept-new-host-keys" in out
    assert text.startswith("# A starter inventory") and text.count("# CHANGE") >= 8
    status, out, err = run(capsys, "fleet", "inventory", "-i", str(site), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert [node["name"] for node in doc["nodes"]] == ["node01", "node02"]
    assert doc["nodes"][1]["address"] == "198.51.100.12"
    # HAProxy and ExaBGP accept every node's files as rendered from it (the certificate stood in by a placeholder).
    status, _, err = run(capsys, "fleet", "render", "-i", str(site), "-o", str(tmp_path / "out"))
    assert status == 0, err
    assert (tmp_path / "out/node02/opt/ober/etc/haproxy.cfg").is_file()
    # A second init does not overwrite (or mix into) an inventory.
    status, _, err = run(capsys, "fleet", "init", str(site))
    assert status == 1 and "holds an inventory already (site.yaml)" in err
    assert written.read_text() == text


def test_fleet_init_example_writes_the_example_site(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "fleet", "init", "--example", str(tmp_path / "ex"))
    assert status == 0, err
    assert (tmp_path / "ex/site.yaml").read_text() == EXAMPLE.read_text()
    (tmp_path / "file").write_text("")
    status, _, err = run(capsys, "fleet", "init", str(tmp_path / "file"))
    assert status == 1 and "is a file, not a directory" in err


def complete(cwd: Path, *words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (the protocol click's bash script speaks)."""
    env = {
        **os.environ,
        "_OBER_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(["ober", *words]),
        "COMP_CWORD": str(len(words)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ober"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def test_shell_completion_offers_the_inventorys_node_names(tmp_path: Path) -> None:
    inventory = ["-i", str(EXAMPLE)]
    assert complete(tmp_path, "fleet", "status", *inventory, "") == ["node01", "node02", "node03", "node04"]
    assert complete(tmp_path, "fleet", "drain", *inventory, "node0") == ["node01", "node02", "node03", "node04"]
    # After a comma: the names not given yet, each completing the whole word.
    assert complete(tmp_path, "fleet", "undrain", *inventory, "node02,node0") == [
        "node02,node01",
        "node02,node03",
        "node02,node04",
    ]
    # The default inventory ($OBER_INVENTORY, else ./inventory/): none here, so nothing, and no error.
    assert complete(tmp_path, "fleet", "status", "") == []
    (tmp_path / "inventory").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "inventory" / "site.yaml")
    assert complete(tmp_path, "fleet", "restart", "--full", "node04") == ["node04"]
    # Subcommands complete as click always did.
    assert "bootstrap" in complete(tmp_path, "fleet", "")


def test_every_command_is_found_under_its_name() -> None:
    from ober.cli import COMMANDS, cli
    from ober.cli.fleet import FLEET_COMMANDS, fleet

    for group, names in ((cli, COMMANDS), (fleet, FLEET_COMMANDS)):
        with click.Context(group) as ctx:
            for name in names:
                command = group.get_command(ctx, name)
                assert command is not None and command.name == name


def test_health_does_not_load_the_fleet_side() -> None:
    # ExaBGP restarts `ober health`: it must not pay for Fabric/paramiko (seconds and tens of MiB on a busy node).
    code = (
        "import sys; from ober.cli import main; main(['health', '--help']); "
        "print(sorted(m for m in sys.modules if m in ('paramiko', 'fabric', 'ober.remote')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]"
