"""What ``ober fleet upgrade`` installs on a node: this workstation's ober and its pinned ExaBGP, from a wheelhouse.

Nodes have no route to PyPI: the wheelhouse (``ober.remote.wheelhouse``) is built here for the node's Python,
sent as one tar stream, unpacked under the fleet state dir and installed with ``pip --no-index``. The new code
runs after the restart the roll does next (ExaBGP and ``ober health`` restart; HAProxy is not a Python package).
HAProxy packages are not upgraded here (see the roll's notes): a reload re-executes whatever binary is installed.
"""

from __future__ import annotations

import io
import re
import tarfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ober import __version__
from ober.remote.connection import Connection
from ober.remote.lock import STATE_DIR
from ober.remote.roll import NodeOps, StepFailed
from ober.remote.rolling import Step
from ober.remote.wheelhouse import PROJECT, build_wheelhouse

_PIN = re.compile(r"^exabgp==(\S+)$")
PIP_TIMEOUT = 300.0


def pinned_exabgp(project: Path = PROJECT) -> str | None:
    """The ExaBGP version ober's pyproject pins."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for dependency in meta.get("dependencies", []):
        match = _PIN.match(str(dependency).replace(" ", ""))
        if match:
            return match.group(1)
    return None


@dataclass
class Installer:
    """Installs the wanted ober and ExaBGP on nodes (one wheelhouse per node Python, built once)."""

    wanted: dict[str, str | None]
    progress: Callable[[str], None] | None = None
    _built: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, progress: Callable[[str], None] | None = None) -> Installer:
        """What an upgrade ends with: this ober and its pinned ExaBGP."""
        return cls({"ober": __version__, "exabgp": pinned_exabgp()}, progress)

    def _archive(self, python: str, arch: str) -> bytes:
        key = f"{python}-{arch}"
        if key not in self._built:
            if self.progress:
                self.progress(f"building the wheelhouse for Python {python} on {arch}")
            wheels = build_wheelhouse(python, arch=arch)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                for wheel in sorted(wheels.glob("*.whl")):
                    tar.add(wheel, arcname=wheel.name)
            self._built[key] = buffer.getvalue()
        return self._built[key]

    def install(self, ops: NodeOps, step: Step) -> None:
        """Install ``step.changes`` (ober, exabgp) into the node's venv; a failure raises StepFailed."""
        wanted = [c for c in ("ober", "exabgp") if c in step.changes]
        if not wanted:
            return
        venv = f"{ops.node.config.install_path}/venv"
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
        pins = [f"ober=={self.wanted['ober']}", f"exabgp=={self.wanted['exabgp']}"]
        pip = [f"{venv}/bin/pip", "install", "-q", "--no-index", "--find-links", directory]
        # New dependencies first, then ober and ExaBGP themselves, replaced even at the same version (--reinstall).
        ops.run([*pip, "--upgrade", *pins], "pip install", PIP_TIMEOUT)
        ops.run([*pip, "--force-reinstall", "--no-deps", *pins], "pip install", PIP_TIMEOUT)
