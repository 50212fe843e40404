"""What ``ober fleet upgrade`` installs on a node: this workstation's ober and ExaBGP, and an HAProxy package.

ober and its pinned ExaBGP come from a wheelhouse; HAProxy, optionally, from a package file.

Nodes have no route to PyPI: the wheelhouse (``ober.remote.wheelhouse``) is built here for the node's Python,
sent as one tar stream, unpacked under the fleet state dir and installed with ``pip --no-index``. The new code
runs after the restart the roll does next (ExaBGP and ``ober health`` restart).

Nodes often have no package mirror either: ``--haproxy-package FILE`` (a ``.deb`` or ``.rpm``) is copied to each
node and installed from the file (``apt-get install ./FILE`` / ``dnf install FILE``). Its step is a hitless reload:
HAProxy's master re-executes the new binary and the node stays in the ECMP set.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ober import __version__
from ober.errors import OberError
from ober.remote.connection import Connection
from ober.remote.lock import STATE_DIR
from ober.remote.ownwheel import pinned
from ober.remote.roll import NodeOps, StepFailed
from ober.remote.rolling import Step
from ober.remote.wheelhouse import build_wheelhouse
from ober.render import paths
from ober.wheelpins import REQUIREMENTS, pinned_install

PIP_TIMEOUT = 300.0


def pinned_exabgp() -> str | None:
    """The ExaBGP version this ober pins (its source tree's pyproject, or its installed metadata)."""
    return pinned("exabgp")


@dataclass(frozen=True)
class PackageFile:
    """An HAProxy package file on this workstation, with what its own metadata says."""

    path: Path
    kind: str
    """``deb`` or ``rpm``."""
    version: str
    """The package's full version (``3.0.11-1``): compared with each node's installed ``haproxy`` package."""

    @classmethod
    def read(cls, path: Path) -> PackageFile:
        """Read a ``.deb`` (with ``dpkg-deb``) or ``.rpm`` (with ``rpm``) and check it is the ``haproxy`` package.

        Raises:
            OberError: not a file, not a .deb/.rpm, the tool to read it is missing, or not an haproxy package.
        """
        if not path.is_file():
            raise OberError(f"{path}: no such package file", "pass the path of an haproxy .deb or .rpm")
        kind = path.suffix.lstrip(".")
        queries = {
            "deb": ["dpkg-deb", "--show", "--showformat", "${Package}|${Version}", str(path)],
            "rpm": ["rpm", "-qp", "--qf", "%{NAME}|%{VERSION}-%{RELEASE}", str(path)],
        }
        if kind not in queries:
            raise OberError(f"{path}: not a .deb or .rpm", "pass the haproxy package file for the nodes' OS")
        argv = queries[kind]
        if shutil.which(argv[0]) is None:
            raise OberError(f"{argv[0]} is needed to read {path.name}", f"install it here ({argv[0]}), or use a node")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise OberError(f"{argv[0]} did not read {path} in 60s") from None
        name, _, version = done.stdout.strip().partition("|")
        if done.returncode != 0 or not version:
            why = (done.stderr.strip().splitlines() or ["unreadable"])[-1]
            raise OberError(f"{path}: not a readable {kind} package: {why}")
        if name != "haproxy":
            raise OberError(f"{path}: is the {name!r} package, not haproxy", "pass the haproxy package file")
        return cls(path, kind, version)


@dataclass
class Installer:
    """Installs the wanted ober and ExaBGP on nodes (one wheelhouse per node Python, built once)."""

    wanted: dict[str, str | None]
    progress: Callable[[str], None] | None = None
    package: PackageFile | None = None
    _built: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, progress: Callable[[str], None] | None = None, package: PackageFile | None = None) -> Installer:
        """What an upgrade ends with: this ober and its pinned ExaBGP (and the HAProxy package, if one is given)."""
        wanted = {"ober": __version__, "exabgp": pinned_exabgp()}
        if package is not None:
            wanted["haproxy_package"] = package.version
        return cls(wanted, progress, package)

    def _archive(self, python: str, arch: str) -> bytes:
        key = f"{python}-{arch}"
        if key not in self._built:
            if self.progress:
                self.progress(f"building the wheelhouse for Python {python} on {arch}")
            wheels = build_wheelhouse(python, arch=arch)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                # The pins go along: the node installs with pip --require-hashes from them.
                for wheel in [*sorted(wheels.glob("*.whl")), wheels / REQUIREMENTS]:
                    tar.add(wheel, arcname=wheel.name)
            self._built[key] = buffer.getvalue()
        return self._built[key]

    def install(self, ops: NodeOps, step: Step) -> None:
        """Install ``step.changes``: the HAProxy package, then ober and ExaBGP; a failure raises StepFailed."""
        if "haproxy_package" in step.changes:
            self._install_package(ops)
        wanted = [c for c in ("ober", "exabgp") if c in step.changes]
        if not wanted:
            return
        venv = paths(ops.node.config)["venv"]
        found = ops.run(
            [f"{venv}/bin/python", "-c", "import platform,sys; print(f'3.{sys.version_info[1]} {platform.machine()}')"],
            "read the node's Python",
        )
        python, arch = found.stdout.split()
        if not isinstance(ops.conn, Connection):
            raise StepFailed("an upgrade needs an SSH connection to the node")
        directory, archive = f"{STATE_DIR}/wheels", f"{STATE_DIR}/wheels.tar"
        ops.run(["mkdir", "-p", STATE_DIR], "make the fleet state dir")
        ops.conn.put(self._archive(python, arch), archive, 0o600, timeout=PIP_TIMEOUT)
        unpack = 'rm -rf "$1" && mkdir -p "$1" && tar -x -f "$2" -C "$1" && rm -f "$2"'
        ops.run(["sh", "-c", unpack, "ober-wheels", directory, archive], "unpack the wheelhouse")
        # Exactly the wheelhouse's pinned wheels, each checked against its hash (the wheelhouse pins ober and ExaBGP
        # at the wanted versions: it was built from this tree).
        pip = [f"{venv}/bin/pip", "install", "-q", *pinned_install(directory)]
        # New dependencies first, then everything replaced even at the same version (--reinstall).
        ops.run([*pip, "--upgrade"], "pip install", PIP_TIMEOUT)
        ops.run([*pip, "--force-reinstall", "--no-deps"], "pip install", PIP_TIMEOUT)

    def _install_package(self, ops: NodeOps) -> None:
        """Copy the HAProxy package file to the node and install it from there (no mirror needed)."""
        package = self.package
        if package is None:
            raise StepFailed("the plan wants an HAProxy package but none was given (--haproxy-package)")
        if not isinstance(ops.conn, Connection):
            raise StepFailed("an upgrade needs an SSH connection to the node")
        remote = f"{STATE_DIR}/{package.path.name}"
        ops.run(["mkdir", "-p", STATE_DIR], "make the fleet state dir")
        ops.conn.put(package.path.read_bytes(), remote, 0o600, timeout=PIP_TIMEOUT)
        if package.kind == "deb":
            # HAProxy's own unit is disabled by bootstrap: its maintainer scripts leave it stopped.
            argv = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"]
            argv += ["-o", "Dpkg::Options::=--force-confold", "--no-install-recommends", remote]
        else:
            argv = ["dnf", "install", "-y", "-q", remote]
        try:
            ops.run(argv, f"install {package.path.name}", PIP_TIMEOUT)
        finally:
            # Not left behind on the node, whether the install worked or not.
            ops.conn.run(["rm", "-f", remote], ops.options.command_timeout)
        found = ops.run(["sh", "-c", _PACKAGE_VERSION], "read the HAProxy package's version")
        if found.stdout.strip() != package.version:
            have = found.stdout.strip() or "none"
            raise StepFailed(f"haproxy package is {have} after installing {package.version}")


# The same query as ober.facts.haproxy_package_version, in shell: the node's ober may be older than this one.
_PACKAGE_VERSION = (
    "if command -v dpkg-query >/dev/null; then dpkg-query -W -f '${Version}' haproxy; "
    "else rpm -q --qf '%{VERSION}-%{RELEASE}' haproxy; fi"
)
