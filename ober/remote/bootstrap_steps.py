"""The steps ``ober fleet bootstrap`` runs on one node over SSH (`NodeJob`), and what the workstation sends it.

Each step compares what the node has with what it should have and acts only on the difference, returning
``("changed" | "ok" | "planned", detail)``; a problem is an OberError naming it (the step failed). The order, the
parallelism and the reports are `ober.remote.bootstrap`'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ober.config import dump_config
from ober.errors import OberError
from ober.inventory import FileSpec, Inventory, InventoryNode
from ober.remote.nodeclient import NodeClient, NodeView
from ober.render import paths
from ober.runner import Result
from ober.secrets import pick

QUICK = 60.0
INSTALL_TIMEOUT = 900.0
ACTIVATE_TIMEOUT = 180.0
POLL = 1.0
BUILD_FILE = "BUILD"
# The throwaway venv that runs a first ``ober bootstrap``: under the install path, which only root can write
# (a fixed name in a world-writable /tmp could be planted by another user).
THROWAWAY = ".fleet-venv"


class Remote(Protocol):
    """What bootstrap needs of a node's connection (`ober.remote.connection.Connection` is one)."""

    user: str
    sudo: bool

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        *,
        stdin: bytes | None = None,
    ) -> Result:
        """Run ``argv`` on the node as root."""
        ...

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        """Write a file atomically."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


Confirm = Callable[[InventoryNode], str | None]
"""An extra activation check (the lab router's route, say): None once satisfied, else what is still missing."""


@dataclass(frozen=True)
class Options:
    """How to bootstrap."""

    dry_run: bool = False
    parallel: int = 10
    wheelhouse: Path | None = None
    """A prepared wheelhouse for every node (else one is built per node platform)."""
    wheelhouse_cache: Path | None = None
    activate_timeout: float = ACTIVATE_TIMEOUT
    confirm: Confirm | None = None


@dataclass(frozen=True)
class Payload:
    """What one node gets from the workstation: the files to push (path → content, mode)."""

    files: dict[str, tuple[bytes, int]]
    staged_config: str
    secrets_file: str


def payloads(inventory: Inventory, nodes: Sequence[InventoryNode], secrets: Mapping[str, str]) -> dict[str, Payload]:
    """Every node's files, read and checked on the workstation before any node is touched.

    Raises:
        SecretsError: a secret a node's config refers to is missing.
        OberError: a file of the inventory's ``files:`` cannot be read.
    """
    shared = {spec.dest: (_read(spec), spec.mode) for spec in inventory.files}
    result: dict[str, Payload] = {}
    for node in nodes:
        where = paths(node.config)
        mine = pick(secrets, node.config.secret_refs(), "the secrets file")
        login = yaml.safe_dump(mine, default_flow_style=False).encode() if mine else b""
        staged = f"{where['etc']}/fleet.yaml"
        files = {where["login"]: (login, 0o600), staged: (dump_config(node.config).encode(), 0o644), **shared}
        result[node.name] = Payload(files, staged, where["login"])
    return result


def _read(spec: FileSpec) -> bytes:
    try:
        return spec.source.read_bytes()
    except OSError as exc:
        raise OberError(
            f"inventory files: cannot read {spec.source} (for {spec.dest}): {exc.strerror}",
            "fix the source path under files: in the inventory (relative paths are relative to the inventory)",
        ) from None


def tarball(directory: Path, build: str) -> bytes:
    """The wheelhouse as an uncompressed tar (wheels are zips already), with a ``BUILD`` file naming the build."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
        stamp = build.encode() + b"\n"
        info = tarfile.TarInfo(BUILD_FILE)
        info.size, info.mode, info.mtime = len(stamp), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(stamp))
    return archive.getvalue()


def parse_remote_files(text: str) -> dict[str, tuple[str, int] | None]:
    """``sha256 mode path`` lines (``- - path`` for a missing file) as path → (sha256, mode) or None."""
    found: dict[str, tuple[str, int] | None] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        digest, mode, path = parts
        found[path] = None if digest == "-" else (digest, int(mode, 8))
    return found


def _need(result: Result, what: str) -> Result:
    if not result.ok:
        raise OberError(f"{what} failed: {result.last_line()}")
    return result


def _json(result: Result, what: str) -> dict[str, Any]:
    """A node command's JSON document; its error (with fix) when it failed."""
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise OberError(f"{what} failed (exit {result.returncode}): {result.last_line()}") from None
    if not isinstance(data, dict):
        raise OberError(f"{what}: unexpected output")
    if data.get("error") or not result.ok:
        raise OberError(f"{what}: {data.get('error') or result.last_line()}", data.get("fix"))
    return data


class NodeJob:
    """The bootstrap steps on one node; each returns (status, detail) or raises OberError (the step failed)."""

    def __init__(self, node: InventoryNode, conn: Remote, payload: Payload, options: Options) -> None:
        self.node = node
        self.conn = conn
        self.payload = payload
        self.options = options
        self.install = node.config.install_path
        self.layout = paths(node.config)
        self.ober = self.layout["ober"]

    def wheelhouse(self, local: Path) -> tuple[str, str]:
        """Copy the wheelhouse unless the node has this build already."""
        remote = self.layout["wheelhouse"]
        have = self.conn.run(["cat", f"{remote}/{BUILD_FILE}"], QUICK)
        if have.ok and have.stdout.strip() == local.name:
            return "ok", f"{remote} has build {local.name}"
        wheels = len(list(local.glob("*.whl")))
        if self.options.dry_run:
            return "planned", f"would copy {wheels} wheels to {remote}"
        data = tarball(local, local.name)
        _need(self.conn.run(["mkdir", "-p", "--", self.install], QUICK), f"mkdir {self.install}")
        archive = f"{self.install}/.wheelhouse.tar"
        self.conn.put(data, archive, 0o600, timeout=INSTALL_TIMEOUT)
        # Unpacked beside the old one and swapped in, so a cut connection never leaves half a wheelhouse.
        script = (
            'set -e; rm -rf "$1.new" "$1.old"; mkdir -p "$1.new"; tar -C "$1.new" -xf "$2"; rm -f "$2"; '
            'if [ -e "$1" ]; then mv "$1" "$1.old"; fi; mv "$1.new" "$1"; rm -rf "$1.old"'
        )
        _need(self.conn.run(["sh", "-c", script, "unpack", remote, archive], QUICK), "unpacking the wheelhouse")
        return "changed", f"copied {wheels} wheels ({len(data) / 2**20:.1f} MiB) to {remote}"

    def install_ober(self) -> tuple[str, str]:
        """Run the node's ``ober bootstrap`` from the wheelhouse (a throwaway venv when ober is not there yet)."""
        wheels = self.layout["wheelhouse"]
        installed = self.conn.run(["test", "-x", self.ober], QUICK).ok
        if not installed and self.options.dry_run:
            return "planned", f"would install ober and run ober bootstrap {self.install}"
        program = self.ober
        throwaway = f"{self.install}/{THROWAWAY}"
        if not installed:
            # Only the pinned wheels, each checked against its hash, when the wheelhouse pins them (ober's always does).
            script = (
                'venv="$1" links="$2"; '
                'if [ -f "$links/requirements.txt" ]; then set -- --require-hashes -r "$links/requirements.txt"; '
                "else set -- ober; fi; "
                'rm -rf "$venv" && python3 -m venv "$venv" && '
                '"$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$links" "$@"'
            )
            made = self.conn.run(["sh", "-c", script, "throwaway", throwaway, wheels], INSTALL_TIMEOUT)
            _need(made, "a throwaway venv to run ober bootstrap")
            program = f"{throwaway}/bin/ober"
        argv = [program, "bootstrap", self.install, "--yes", "--json", "--wheelhouse", wheels]
        argv += ["--dry-run"] if self.options.dry_run else []
        try:
            data = _json(self.conn.run(argv, INSTALL_TIMEOUT), "ober bootstrap")
        finally:
            if not installed:
                self.conn.run(["rm", "-rf", "--", throwaway], QUICK)
        steps = [s for s in data.get("steps", []) if isinstance(s, dict) and (s.get("changed") or s.get("changes"))]
        titles = ", ".join(str(s.get("title") or s.get("name")) for s in steps)
        if self.options.dry_run:
            return ("planned", f"ober bootstrap would: {titles}") if steps else ("ok", "ober bootstrap: nothing to do")
        if data.get("changed"):
            return "changed", f"ober bootstrap: {titles or 'done'}"
        return "ok", "ober bootstrap: nothing to do"

    def files(self) -> tuple[str, str]:
        """Write the files whose content or mode differ on the node."""
        wanted = self.payload.files
        script = (
            'for f; do if [ -f "$f" ]; then printf "%s %s %s\\n" "$(sha256sum < "$f" | cut -d" " -f1)" '
            '"$(stat -c %a "$f")" "$f"; else printf -- "- - %s\\n" "$f"; fi; done'
        )
        have = parse_remote_files(
            _need(self.conn.run(["sh", "-c", script, "sums", *wanted], QUICK), "reading files").stdout
        )
        stale = [
            path for path, (data, mode) in wanted.items() if have.get(path) != (hashlib.sha256(data).hexdigest(), mode)
        ]
        if not stale:
            return "ok", f"{len(wanted)} files up to date"
        if self.options.dry_run:
            return "planned", f"would write {', '.join(stale)}"
        directories = sorted({path.rsplit("/", 1)[0] for path in stale})
        _need(self.conn.run(["mkdir", "-p", "--", *directories], QUICK), "mkdir")
        for path in stale:
            data, mode = wanted[path]
            self.conn.put(data, path, mode)
        return "changed", f"wrote {', '.join(stale)}"

    def configure(self, files_changed: bool) -> tuple[str, str]:
        """``ober config --from`` the staged config: checked on the node, applied with rollback."""
        if self.options.dry_run and (files_changed or not self.conn.run(["test", "-x", self.ober], QUICK).ok):
            return "planned", f"would apply {self.payload.staged_config} with ober config --from"
        # --replace: the inventory is the whole truth, so a key it no longer sets does not linger from a merge.
        argv = [self.ober, "config", "-c", self.layout["config"], "--from", self.payload.staged_config]
        argv.append("--replace")
        argv += ["--secrets", self.payload.secrets_file, "--json", *(["--dry-run"] if self.options.dry_run else [])]
        data = _json(self.conn.run(argv, INSTALL_TIMEOUT), "ober config")
        changes = [str(c.get("path")) for c in data.get("changes", []) if isinstance(c, dict)]
        if not changes:
            return "ok", "the node already has this configuration"
        if self.options.dry_run:
            return "planned", f"would change {len(changes)} files"
        actions = ", ".join(str(a) for a in data.get("actions", [])) or "none"
        return "changed", f"applied {len(changes)} changed files (checked by haproxy -c); services: {actions}"

    def activate(self) -> tuple[str, str]:
        """Start the units unless the node is in service already, then wait until it is verified."""
        view = NodeClient(self.conn, self.node).status()
        if view.drained is not None:
            return "ok", f"drained by {view.drained.by} ({view.drained.reason}): left out of service"
        problem = self._problem(view)
        if problem is None:
            return "ok", f"in service: {_serving(view)}"
        if self.options.dry_run:
            now = "ober not installed yet" if view.error and "not found" in view.error else problem
            return "planned", f"would start ober-http and ober-bgp and wait until verified (now: {now})"
        _need(self.conn.run(["systemctl", "enable", "ober-http", "ober-bgp"], QUICK), "systemctl enable")
        _need(self.conn.run([self.ober, "start", "-c", self.layout["config"]], QUICK * 2), "ober start")
        started = time.monotonic()
        deadline = started + self.options.activate_timeout
        while True:
            view = NodeClient(self.conn, self.node).status()
            problem = self._problem(view)
            if problem is None:
                return "changed", f"started; in service after {time.monotonic() - started:.1f}s: {_serving(view)}"
            if time.monotonic() > deadline:
                raise OberError(
                    f"not in service {self.options.activate_timeout:g}s after start: {problem}",
                    f"look at the node: ober fleet status {self.node.name}; journalctl -u ober-http -u ober-bgp",
                )
            time.sleep(POLL)

    def _problem(self, view: NodeView) -> str | None:
        """What keeps the node from counting as verified (None: verified)."""
        problems = view.problems()
        missing = [peer for peer in self.node.config.bgp.neighbors if view.bgp.get(peer) != "established"]
        if missing and not any(p.startswith("BGP") for p in problems):
            problems.append(f"BGP {', '.join(missing)} not established")
        if problems:
            return "; ".join(problems)
        if self.options.confirm is not None:
            return self.options.confirm(self.node)
        return None


def _serving(view: NodeView) -> str:
    return f"{', '.join(view.announced)} announced to {len(view.bgp)} neighbor(s)"
