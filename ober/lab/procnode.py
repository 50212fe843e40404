"""A lab node made of plain processes in a namespace: HAProxy, ExaBGP and ``ober health`` from a rendered config.

No systemd here (the nspawn nodes have it): this is the smallest real node, for testing health and failover
against a real router. The rendered tree is written under the lab's work directory; the ``ober`` and ``exabgp``
programs ExaBGP's config names are linked to the ones installed with this ober.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.acme_node import ensure_placeholder
from ober.config import NodeConfig, parse_node_config
from ober.errors import OberError
from ober.facts import find_program
from ober.healthd import state_file
from ober.lab.netns import Lab, add_address
from ober.lab.router import Router
from ober.render import paths, render_node
from ober.validate import local_run_as

READY_TIMEOUT = 20.0
PIPENAME = "ober"


@dataclass
class ProcessNode:
    """A running lab node."""

    name: str
    ns: str
    address: str
    config: NodeConfig
    haproxy: subprocess.Popen[bytes]
    exabgp: subprocess.Popen[bytes]
    logdir: Path
    env: dict[str, str]

    def state(self) -> dict[str, Any]:
        """What ``ober health`` last published (empty before its first round)."""
        try:
            data: dict[str, Any] = json.loads(state_file(self.config).read_text())
        except (OSError, ValueError):
            return {}
        return data

    def health_pid(self) -> int | None:
        """The PID of this node's ``ober health`` (ExaBGP's child), from its state file."""
        pid = self.state().get("pid")
        return int(pid) if isinstance(pid, int) else None

    def maintenance(self, on: bool) -> None:
        """Create or remove the maintenance file (what ``ober drain`` does)."""
        path = Path(self.config.health.maintenance_file)
        if on:
            path.write_text('{"by": "lab", "since": 0, "reason": "test"}\n')
        else:
            path.unlink(missing_ok=True)

    def kill_haproxy(self) -> None:
        """SIGKILL this node's HAProxy master and its workers, by PID (a crash, not a stop).

        Network namespaces do not separate PIDs: killing by name would hit every HAProxy on the machine.
        """
        master = self.haproxy.pid
        workers = children(master)
        for pid in [master, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.haproxy.wait(5)


def children(pid: int) -> list[int]:
    """The PIDs of a process's children (from /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def lab_config(data: Mapping[str, Any], install_path: Path) -> NodeConfig:
    """A node config for the lab: the caller's values, paths under ``install_path``."""
    merged = {**data, "install_path": str(install_path)}
    merged.setdefault("health", {})
    merged["health"] = {**merged["health"], "maintenance_file": str(install_path / "etc" / "maintenance")}
    return parse_node_config(merged)


def write_install(config: NodeConfig, secrets: Mapping[str, str]) -> dict[str, str]:
    """Write the node's rendered files under its install path, with the runtime directories HAProxy needs; its paths.

    Files outside the install path (units, sysctl, the network) are left out: a lab node never changes the host.
    This host has no ober users: HAProxy's workers drop to ``nobody`` in their chroot instead (see
    :func:`ober.validate.local_run_as`); whatever runs ``ober health`` here stays root.
    """
    for item in render_node(config, secrets, run_as=local_run_as()).files:
        if item.path.startswith(f"{config.install_path}/"):
            target = Path(item.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.content)
            target.chmod(item.mode)
    p = paths(config)
    for directory in (p["run_dir"], p["chroot"]):
        Path(directory).mkdir(parents=True, exist_ok=True)
    ensure_placeholder(config)  # as `ober config` does: HAProxy needs a certificate in an ACME directory
    return p


def start_node(
    lab: Lab, router: Router, name: str, address: str, data: Mapping[str, Any], secrets: Mapping[str, str]
) -> ProcessNode:
    """Create a namespace on the router's link, render ``data`` for it, start HAProxy and ExaBGP.

    ``data`` is an ``ober.yaml`` mapping; ``install_path`` and the maintenance file are set to lab paths.
    """
    ns = lab.netns(name)
    router.connect(ns, address)
    install = lab.path(name, "opt", "ober")
    config = lab_config(data, install)
    for vip in config.vips:
        add_address(ns, "lo", f"{vip.address}/32")
    p = write_install(config, secrets)
    venv_bin = Path(p["venv"]) / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    for program in ("ober", "exabgp"):
        found = find_program(program)
        if found is None:
            raise OberError(f"{program} is not installed here", "pip install -e . in this environment")
        (venv_bin / program).symlink_to(found)
    logs = lab.path(name, "log")
    haproxy = lab.spawn(
        ns,
        [find_program("haproxy") or "haproxy", "-W", "-f", p["haproxy_cfg"], "-p", p["pid_file"]],
        log=logs / "haproxy.log",
    )
    _wait_for(lambda: Path(p["admin_socket"]).exists(), f"{name}: HAProxy did not start; see {logs}/haproxy.log")
    # Several ExaBGP on one host share the filesystem: each node's CLI pipes live under its own root
    # (ExaBGP looks in $EXABGP_ROOT/run/exabgp/ when /run/exabgp/ has none).
    pipes = install / "run" / "exabgp"
    pipes.mkdir(parents=True, exist_ok=True)
    for end in ("in", "out"):
        os.mkfifo(pipes / f"{PIPENAME}.{end}", 0o600)
    env = {
        "EXABGP_ROOT": str(install),
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "true",
        "exabgp_api_pipename": PIPENAME,
        "exabgp_api_ack": "true",
        "exabgp_log_destination": "stdout",
    }
    exabgp = lab.spawn(ns, [str(venv_bin / "exabgp"), "server", p["exabgp_conf"]], log=logs / "exabgp.log", env=env)
    return ProcessNode(name, ns, address, config, haproxy, exabgp, logs, env)


def _start_haproxy(lab: Lab, ns: str, config: NodeConfig, logs: Path) -> subprocess.Popen[bytes]:
    p = paths(config)
    Path(p["admin_socket"]).unlink(missing_ok=True)
    haproxy = lab.spawn(
        ns,
        [find_program("haproxy") or "haproxy", "-W", "-f", p["haproxy_cfg"], "-p", p["pid_file"]],
        log=logs / "haproxy.log",
    )
    _wait_for(lambda: Path(p["admin_socket"]).exists(), f"{config.name}: HAProxy did not start; see {logs}/haproxy.log")
    return haproxy


def restart_node(lab: Lab, node: ProcessNode) -> ProcessNode:
    """Start a stopped node's HAProxy and ExaBGP again (what ``ober start`` does through systemd)."""
    p = paths(node.config)
    haproxy = _start_haproxy(lab, node.ns, node.config, node.logdir)
    exabgp = lab.spawn(
        node.ns, [f"{p['venv']}/bin/exabgp", "server", p["exabgp_conf"]], log=node.logdir / "exabgp.log", env=node.env
    )
    return ProcessNode(node.name, node.ns, node.address, node.config, haproxy, exabgp, node.logdir, node.env)


def stop_health(node: ProcessNode) -> int | None:
    """SIGTERM the node's health process; returns its PID."""
    pid = node.health_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    return pid


def _wait_for(condition: Any, message: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise OberError(message)
