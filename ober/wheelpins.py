"""Pinned wheelhouses: every wheel shipped to a node named with its exact version and SHA-256.

The workstation writes ``requirements.txt`` into each wheelhouse it builds (``name==version --hash=sha256:…`` for
every wheel) and checks it again before using a cached one; the node installs with ``pip --require-hashes -r``, so
pip refuses a wheel that was changed, added or swapped on the way, and installs exactly those versions.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ober.errors import OberError

REQUIREMENTS = "requirements.txt"
_LINE = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:([0-9a-f]{64})\Z")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_pin(wheel: Path) -> tuple[str, str]:
    """A wheel's distribution name (normalized as pip compares it) and version, from its file name."""
    parts = wheel.name.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise OberError(f"{wheel.name}: not a wheel file name", "remove it from the wheelhouse")
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def requirements_text(directory: Path) -> str:
    """The pinned requirements of every wheel in ``directory`` (sorted; one line each)."""
    lines = []
    for wheel in sorted(directory.glob("*.whl")):
        name, version = wheel_pin(wheel)
        lines.append(f"{name}=={version} --hash=sha256:{_sha256(wheel)}")
    return "".join(f"{line}\n" for line in lines)


def write_requirements(directory: Path) -> Path:
    """Write ``requirements.txt`` for the wheels in ``directory`` (done once, when the wheelhouse is built)."""
    path = directory / REQUIREMENTS
    path.write_text(requirements_text(directory))
    return path


def verify_requirements(directory: Path) -> None:
    """Check that ``directory`` holds exactly the wheels its ``requirements.txt`` pins, unchanged.

    Raises:
        OberError: no requirements file, or a wheel missing, added or changed since it was written.
    """
    path = directory / REQUIREMENTS
    try:
        recorded = path.read_text().splitlines()
    except OSError:
        raise OberError(f"{directory}: no {REQUIREMENTS}: not a pinned wheelhouse", f"remove {directory}") from None
    expected = {}
    for line in recorded:
        match = _LINE.match(line)
        if match is None:
            raise OberError(f"{path}: a line is not 'name==version --hash=sha256:…'", f"remove {directory}")
        expected[(match.group(1), match.group(2))] = match.group(3)
    found = {wheel_pin(wheel): wheel for wheel in directory.glob("*.whl")}
    for pin in sorted(set(expected) | set(found)):
        wheel = found.get(pin)
        if wheel is None or pin not in expected or _sha256(wheel) != expected[pin]:
            what = "is missing" if wheel is None else "was added" if pin not in expected else "was changed"
            raise OberError(
                f"{directory}: {pin[0]} {pin[1]} {what} since the wheelhouse was built",
                f"remove {directory} and run again to rebuild it (and find out who changed it)",
            )


def pinned_install(wheels: str) -> list[str]:
    """The pip arguments that install exactly the wheelhouse's pinned wheels, each checked against its hash."""
    return ["--no-index", "--find-links", wheels, "--require-hashes", "-r", f"{wheels}/{REQUIREMENTS}"]
