"""ober as a user installs it, driving lab nodes: a venv without pip, run from outside the source tree.

pipx and ``uv tool`` give ober an environment without pip, and nobody runs it from a checkout. Here ober's wheel
(the one the lab fixture built from this tree) is installed into a fresh ``venv --without-pip`` by another
environment's pip (``pip --python``), and that ober, run from an empty directory with a PATH that holds only the
system's tools, bootstraps a lab node from nothing (its wheelhouse packed from the installed files, the
dependencies downloaded by the system's pip into an empty cache), upgrades it, puts ``ober`` on the node's PATH,
and checks a render with the node's HAProxy. The lab nodes have no internet, as real ones often do not.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fleet_lab import BOOTSTRAP_TIMEOUT, FleetLab, fleet_lab_fixture  # noqa: F401  (the shared fixture)

pytestmark = pytest.mark.lab

NODE = "node04"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Installed:
    """The pip-less installed ober and where it runs."""

    ober: Path
    cwd: Path
    cache: Path

    def run(self, *args: str, timeout: float = BOOTSTRAP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "OBER_", "VIRTUAL"))}
        env.update(PATH=f"{self.ober.parent}:{SYSTEM_PATH}", OBER_WHEELHOUSE_CACHE=str(self.cache))
        return subprocess.run(
            [str(self.ober), *args], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        done = self.run("--json", *args)
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(
                f"no JSON from ober {' '.join(args)} (exit {done.returncode}): {done.stderr}"
            ) from None
        return done.returncode, doc, done.stderr


@pytest.fixture(scope="module")
def installed(fleet_lab: FleetLab, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("pipless")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    wheel = next(fleet_lab.wheelhouse.glob("ober-*.whl"))
    # Another environment's pip installs into it, as pipx and uv do with their own installer.
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, timeout=900)
    python = venv / "bin/python"
    assert subprocess.run([python, "-c", "import pip"], capture_output=True, check=False).returncode != 0
    assert not (venv / "bin/pip").exists()
    work = base / "work"
    work.mkdir()
    return Installed(venv / "bin/ober", work, base / "cache")


def lab_args(lab: FleetLab) -> list[str]:
    return ["-i", str(lab.fleet.inventory_path), "--secrets", str(lab.fleet.secrets_path)]


def digest_on(lab: FleetLab, path: str) -> str:
    return lab.run_on(NODE, f"sha256sum {path}").split()[0]


def test_an_installed_ober_without_pip_plans_an_upgrade(fleet_lab: FleetLab, installed: Installed) -> None:
    # Was: "internal error: FileNotFoundError: …/site-packages/pyproject.toml".
    code, plan, err = installed.json("fleet", "upgrade", "--dry-run", "-i", str(fleet_lab.fleet.inventory_path), NODE)
    assert code == 0, err
    assert [step["node"] for step in plan["steps"]] == [NODE]


def test_an_installed_ober_without_pip_upgrades_and_bootstraps_a_node(
    fleet_lab: FleetLab, installed: Installed
) -> None:
    fleet_lab.wait_in_service()
    # The upgrade installs the installed ober's own code on the node (its wheel packed again from its files).
    code, roll, err = installed.json("fleet", "upgrade", "--reinstall", "--yes", *lab_args(fleet_lab)[:2], NODE)
    assert code == 0 and roll["ok"], (roll, err)
    assert [(r["node"], r["status"]) for r in roll["results"]] == [(NODE, "done")], roll["results"]
    site = "/opt/ober/venv/lib/python3.13/site-packages/ober"
    for relative in ("remote/ownwheel.py", "cli/fleet.py", "bootstrap/plan.py"):
        local = hashlib.sha256((REPO / "ober" / relative).read_bytes()).hexdigest()
        assert digest_on(fleet_lab, f"{site}/{relative}") == local, relative
    fleet_lab.wait_in_service()

    # A node bootstrapped before ober put itself on PATH gets the link from a re-run; `ober` then works there.
    code, report, err = installed.json("fleet", "bootstrap", *lab_args(fleet_lab), NODE)
    assert code == 0, (report, err)
    assert fleet_lab.run_on(NODE, "readlink /usr/local/bin/ober").strip() == "/opt/ober/venv/bin/ober"
    assert json.loads(fleet_lab.run_on(NODE, "ober status --json"))["node"] == NODE

    # From nothing: uninstall removes the link with the rest; the installed ober bootstraps the node again.
    fleet_lab.run_on(NODE, "ober uninstall --yes --json >/dev/null")
    assert fleet_lab.run_on(NODE, "ls /opt/ober/venv /usr/local/bin/ober 2>&1 || true").count("No such file") == 2
    code, report, err = installed.json("fleet", "bootstrap", *lab_args(fleet_lab), NODE)
    assert code == 0, (report, err)
    node = next(n for n in report["nodes"] if n["name"] == NODE)
    steps = {step["step"]: step["status"] for step in node["steps"]}
    assert steps["install"] == "changed" and steps["activate"] == "changed", node
    (house,) = set(report["wheelhouses"].values())
    assert Path(house).parent == installed.cache  # built here, in the cache this user chose, from nothing
    wheels = sorted(path.name for path in Path(house).glob("*.whl"))
    assert "ober-0.1.0-py3-none-any.whl" in wheels and any(name.startswith("exabgp-5.0.15") for name in wheels)
    timings = ", ".join(f"{step['step']} {step['seconds']:.0f}s" for step in node["steps"])
    print(f"bootstrap of {NODE} from nothing by a pip-less installed ober: {timings}; {len(wheels)} wheels")
    for relative in ("remote/ownwheel.py", "cli/fleet.py"):
        local = hashlib.sha256((REPO / "ober" / relative).read_bytes()).hexdigest()
        assert digest_on(fleet_lab, f"{site}/{relative}") == local, relative
    assert fleet_lab.run_on(NODE, "command -v ober").strip() == "/usr/local/bin/ober"
    fleet_lab.wait_in_service()


def test_a_render_checked_by_a_nodes_haproxy(fleet_lab: FleetLab, installed: Installed) -> None:
    out = installed.cwd / "rendered"
    done = installed.run("fleet", "render", *lab_args(fleet_lab), "-o", str(out), "--check-on", "node01")
    assert done.returncode == 0, done.stderr
    assert "checked by haproxy -c on node01 (HAProxy 3." in done.stdout
    assert (out / "node03/opt/ober/etc/haproxy.cfg").is_file()
    assert fleet_lab.run_on("node01", "ls -d /tmp/ober-check-* 2>/dev/null || true").strip() == ""
