"""Check rendered files with the real tools: ``haproxy -c`` and ``exabgp validate``.

The files are rendered a second time into a scratch tree (every path inside them prefixed by the scratch
directory), so the check reads exactly what the node would, without touching the node's real paths. Files the
node has but this machine may not (the TLS certificate, a backend CA, the ``ober`` program ExaBGP runs) are copied
from their real path when present, else replaced by placeholders, and the result says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ober.certs import self_signed_pem
from ober.config import NodeConfig
from ober.errors import RenderError
from ober.facts import account_names, find_program, parse_haproxy_version
from ober.render import NODE_USERS, RunAs, paths, render_node

CHECK_TIMEOUT = 60.0


@dataclass
class CheckResult:
    """What a check found: warnings from the tool, and what was stood in by placeholders."""

    tool: str
    warnings: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    host: str | None = None
    """Where the tool ran: None for this machine, else the node's name."""
    version: str | None = None
    """The tool's version, where known."""


@dataclass(frozen=True)
class Tool:
    """How to run a checker: the command, and optionally a root directory it runs chrooted in.

    With ``chroot`` set (a Debian image holding another HAProxy version), the scratch tree is made inside it.
    """

    command: tuple[str, ...]
    chroot: Path | None = None

    def argv(self, *args: str) -> list[str]:
        """The full command line."""
        prefix = ["chroot", str(self.chroot)] if self.chroot else []
        return [*prefix, *self.command, *args]


def local_tool(name: str) -> Tool:
    """The tool as installed here (ExaBGP in ober's own venv, HAProxy in /usr/sbin)."""
    return Tool((find_program(name) or name,))


_PLACEHOLDER: list[str] = []


def missing_users(root: Path = Path("/")) -> list[str]:
    """The node's users and groups (:data:`ober.render.NODE_USERS`) that do not exist under ``root``."""
    users, groups = account_names(root)
    wanted = NODE_USERS
    missing = [f"user {name}" for name in (wanted.haproxy_user, wanted.bgp_user) if name not in users]
    return missing + [f"group {name}" for name in (wanted.haproxy_group, wanted.bgp_group) if name not in groups]


def local_run_as(root: Path = Path("/")) -> RunAs:
    """The node's users where they exist under ``root`` (a node), else stand-ins every Debian and RHEL has.

    HAProxy resolves ``user``, ``group`` and a socket's ``group`` when it reads its config, so checking the files on
    a machine without the node's users (a workstation, a lab, a check image) uses these; the node runs with its own.
    """
    if not missing_users(root):
        return NODE_USERS
    nobody = "nogroup" if "nogroup" in account_names(root)[1] else "nobody"
    return RunAs("nobody", nobody, "nobody", nobody)


def _placeholder_pem(target: Path) -> None:
    """A throwaway self-signed certificate with its key, for a syntax check only (made once per process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _PLACEHOLDER:
        _PLACEHOLDER.append("".join(self_signed_pem("ober-placeholder")))
    target.write_text(_PLACEHOLDER[0])


def _stage_file(real: str, scratch: Path, result: CheckResult, make: str) -> None:
    """Copy ``real`` into the scratch tree, or make a placeholder of kind ``make`` there."""
    target = scratch / real.lstrip("/")
    source = Path(real)
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)  # keeps the mode: ExaBGP refuses a program it cannot execute
        return
    if source.is_dir() and any(source.glob("*.pem")):
        shutil.copytree(source, target, dirs_exist_ok=True)
        return
    result.placeholders.append(real)
    make_placeholder(target, make)


def make_placeholder(target: Path, make: str) -> None:
    """A stand-in at ``target``: ``program`` (exits 0), ``pem-dir`` (a directory of one PEM) or ``pem``."""
    if make == "program":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o755)
    elif make == "pem-dir":
        _placeholder_pem(target / "placeholder.pem")
    else:
        _placeholder_pem(target)


def _run(argv: list[str], tool: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=env, check=False)
    except FileNotFoundError:
        raise RenderError(f"{tool} is not installed here", _MISSING_FIX.get(tool, f"install {tool}")) from None
    except subprocess.TimeoutExpired:
        raise RenderError(f"{tool} did not finish in {CHECK_TIMEOUT:.0f}s") from None


class _Scratch:
    """A scratch tree holding one node's files, seen by the tool at ``root``."""

    def __init__(self, tool: Tool) -> None:
        self.chroot = tool.chroot
        base = (tool.chroot / "tmp") if tool.chroot else None
        self.host_dir = Path(tempfile.mkdtemp(prefix="oc-", dir=base))
        # Inside the chroot the same directory is seen under /tmp.
        self.root = "/tmp/" + self.host_dir.name if tool.chroot else str(self.host_dir)  # noqa: S108

    def write(self, config: NodeConfig, secrets: Mapping[str, str], result: CheckResult) -> None:
        run_as = local_run_as(self.chroot or Path("/"))
        if run_as != NODE_USERS and result.tool == "haproxy":
            result.placeholders.append(f"users {', '.join(NODE_USERS.users)} (checked as {run_as.haproxy_user})")
        for item in render_node(config, secrets, root=self.root, run_as=run_as).files:
            target = self.host_dir / item.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.content)
            target.chmod(item.mode)

    def unscratch(self, text: str) -> str:
        """Tool output with scratch paths turned back into the node's real paths."""
        return text.replace(self.root, "")

    def close(self) -> None:
        shutil.rmtree(self.host_dir, ignore_errors=True)


_MISSING_FIX = {
    "haproxy": "install haproxy here (the version the nodes run), check on a node instead "
    "(ober fleet render --check-on NODE), or skip the check (--no-check)",
    "exabgp": "reinstall ober (ExaBGP comes with it), or skip the check (--no-check)",
}
_PREFIX = re.compile(r"^\[(?:ALERT|WARNING|NOTICE)\]\s*(?:\(\d+\))?\s*:\s*(?:config\s*:\s*)?")


def tool_lines(text: str, marker: str) -> list[str]:
    """The tool's lines carrying ``marker``, without its ``[ALERT] (pid) : config :`` prefix."""
    return [_PREFIX.sub("", line.strip()) for line in text.splitlines() if marker in line]


def haproxy_stand_ins(config: NodeConfig) -> list[tuple[str, str]]:
    """The files ``haproxy -c`` reads that ober does not render: (node path, kind of placeholder)."""
    crt = paths(config)["crt"]
    staged = [(crt, "pem" if config.certificates.pem and crt.endswith(".pem") else "pem-dir")]
    for group in config.backends:
        if group.tls.enabled and group.tls.verify and group.tls.ca_file:
            staged.append((group.tls.ca_file, "pem"))
    return staged


def check_haproxy(
    config: NodeConfig, secrets: Mapping[str, str] | None = None, tool: Tool | None = None
) -> CheckResult:
    """Run ``haproxy -c`` on the node's rendered ``haproxy.cfg``.

    Raises:
        RenderError: HAProxy rejected the config; the message quotes its first alert.
    """
    secrets = secrets or {}
    tool = tool or local_tool("haproxy")
    result = CheckResult(tool="haproxy")
    scratch = _Scratch(tool)
    try:
        scratch.write(config, secrets, result)
        for real, make in haproxy_stand_ins(config):
            _stage_file(real, scratch.host_dir, result, make)
        env = dict(os.environ)
        if config.stats.auth:
            env["OBER_STATS_PASSWORD"] = secrets.get(config.stats.auth.password_secret, "")
        cfg = paths(config, scratch.root)["haproxy_cfg"]
        done = _run(tool.argv("-c", "-f", cfg), "haproxy", env)
        output = scratch.unscratch(done.stdout + done.stderr)
        if done.returncode != 0:
            alerts = tool_lines(output, "[ALERT]") or output.strip().splitlines()[-1:] or ["no output"]
            raise RenderError(
                f"haproxy -c rejected {paths(config)['haproxy_cfg']}: {alerts[0]}",
                "fix the config value it names; see 'haproxy -c' output for more",
            )
        result.warnings = tool_lines(output, "[WARNING]")
        result.version = parse_haproxy_version(_run(tool.argv("-v"), "haproxy").stdout)
        return result
    finally:
        scratch.close()


def check_exabgp(config: NodeConfig, secrets: Mapping[str, str] | None = None, tool: Tool | None = None) -> CheckResult:
    """Run ``exabgp validate`` on the node's rendered ExaBGP configuration.

    Raises:
        RenderError: ExaBGP rejected the config; the message quotes its reason.
    """
    tool = tool or local_tool("exabgp")
    result = CheckResult(tool="exabgp")
    scratch = _Scratch(tool)
    try:
        scratch.write(config, secrets or {}, result)
        _stage_file(f"{paths(config)['venv']}/bin/ober", scratch.host_dir, result, "program")
        conf = paths(config, scratch.root)["exabgp_conf"]
        done = _run(tool.argv("validate", "-n", conf), "exabgp")
        if done.returncode != 0:
            output = scratch.unscratch(done.stdout + done.stderr)
            reasons = [line for line in output.splitlines() if line.strip() and not line.startswith("configuration")]
            reason = "; ".join(line.strip() for line in reasons[-3:]) or "no output"
            raise RenderError(
                f"exabgp rejected {paths(config)['exabgp_conf']}: {reason}", "fix the BGP settings it names"
            )
        return result
    finally:
        scratch.close()


def check_all(config: NodeConfig, secrets: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Run both checks with the tools installed here."""
    return [check_haproxy(config, secrets), check_exabgp(config, secrets)]
