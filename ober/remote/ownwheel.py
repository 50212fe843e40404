"""ober's own wheel for the nodes: built from the source tree, or packed again from the installed distribution.

A node gets the ober that runs on this workstation. Run from a git checkout (an editable install, or ``python -m
ober`` in the tree), that is the source tree, built with ``pip wheel``. Installed with pip, pipx or ``uv tool``,
there is no source tree, and often no pip in ober's environment: the wheel is then packed again from the installed
files, which the distribution's ``RECORD`` lists (what ``wheel pack`` does). Its ``WHEEL`` and ``METADATA`` are
the installed ones, so the node gets the same version and the same pinned dependencies; scripts and bytecode are
left out (pip makes them again on the node).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ober
from ober.errors import OberError

NAME = "ober"
# Files pip writes at install time: they describe that install, not the wheel.
_INSTALL_ONLY = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
# A fixed timestamp: the same installed files give a byte-identical wheel.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXTRA = re.compile(r";.*\bextra\s*==")
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)\s*==\s*(\S+)$")
# What goes into ober's wheel from a source tree (pyproject's hatch config): a change to any of it is a new wheel.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "ober", "templates", "inventory")
REINSTALL = "reinstall ober with pip, pipx or uv (from its wheel), or pass --wheelhouse DIR"


@dataclass(frozen=True)
class Source:
    """Where ober's wheel comes from, and what it needs."""

    version: str
    requirements: tuple[str, ...]
    """The runtime dependencies (extras left out), as the project declares them."""
    digest: str
    """A hash of everything that goes into the wheel: a new one means a new wheel."""
    tree: Path | None = None
    """The source tree (holding pyproject.toml), when ober runs from one."""
    files: tuple[tuple[str, Path], ...] = ()
    """The installed files, as (name in the wheel, path here), when ober runs from an installed wheel."""
    wheel_tag: str = "py3-none-any"

    @property
    def installed(self) -> bool:
        """Whether this is an installed distribution (no source tree)."""
        return self.tree is None

    def describe(self) -> str:
        """For messages: where the wheel comes from."""
        return f"the source tree {self.tree}" if self.tree else f"the installed ober {self.version}"


def source_tree() -> Path | None:
    """The source tree the running ober is imported from (a checkout), or None for an installed ober."""
    tree = Path(ober.__file__).resolve().parents[1]
    pyproject = tree / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None
    return tree if name == NAME else None


def find_source(project: Path | None = None) -> Source:
    """Where ober's wheel comes from: ``project``, else the running ober's source tree, else its installed files.

    Raises:
        OberError: ``project`` has no pyproject.toml, or the installed distribution cannot be read back.
    """
    tree = project or source_tree()
    if tree is not None:
        return _from_tree(tree)
    return _from_installed()


def requirements() -> tuple[str, ...]:
    """The runtime dependencies of the running ober (from its source tree or its installed metadata)."""
    return find_source().requirements


def pinned(name: str, requires: Sequence[str] | None = None) -> str | None:
    """The version ``requires`` (default: ober's own) pins ``name`` to with ``==``, or None."""
    wanted = name.lower().replace("_", "-")
    for requirement in requirements() if requires is None else requires:
        match = _PIN.match(str(requirement).replace(" ", ""))
        if match and match.group(1).lower().replace("_", "-") == wanted:
            return match.group(2)
    return None


def _from_tree(tree: Path) -> Source:
    pyproject = tree / "pyproject.toml"
    if not pyproject.is_file():
        raise OberError(f"no pyproject.toml in {tree}", "build the wheelhouse from ober's source tree")
    meta = tomllib.loads(pyproject.read_text())["project"]
    return Source(str(meta["version"]), tuple(meta.get("dependencies", [])), source_digest(tree), tree=tree)


def _from_installed() -> Source:
    try:
        dist = importlib.metadata.distribution(NAME)
    except importlib.metadata.PackageNotFoundError:
        raise OberError(
            "ober runs neither from its source tree nor from an installed distribution", REINSTALL
        ) from None
    listed = dist.files
    if not listed:
        raise OberError("the installed ober lists no files (its RECORD is missing)", REINSTALL)
    info = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
    files: list[tuple[str, Path]] = []
    for item in listed:
        parts = item.parts
        # Outside site-packages (the console script) or bytecode: pip makes them on the node.
        if parts[0] == ".." or "__pycache__" in parts or item.suffix == ".pyc":
            continue
        if parts[0] == info and item.name in _INSTALL_ONLY:
            continue
        if parts[0] not in (NAME, info):
            continue  # e.g. an editable install's .pth file
        path = Path(str(dist.locate_file(item)))
        if not path.is_file():
            raise OberError(f"the installed ober is incomplete: {path} is missing", REINSTALL)
        files.append((str(item), path))
    names = {name for name, _ in files}
    if f"{info}/WHEEL" not in names or f"{info}/METADATA" not in names or f"{NAME}/__init__.py" not in names:
        raise OberError(f"the installed ober at {dist.locate_file('')} is not a complete wheel install", REINSTALL)
    files.sort()
    tag = "py3-none-any"
    for line in (dist.read_text("WHEEL") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Tag":
            tag = value.strip()
            break
    requires = tuple(r for r in dist.requires or () if not _EXTRA.search(r))
    key = digest(*(item for name, path in files for item in (name.encode(), path.read_bytes())))
    return Source(dist.version, requires, key, files=tuple(files), wheel_tag=tag)


def source_digest(project: Path) -> str:
    """A hash of the files that go into ober's wheel (paths and contents; caches and bytecode skipped)."""
    files: list[Path] = []
    for name in SOURCES:
        path = project / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    parts = [item for path in sorted(files) for item in (str(path.relative_to(project)).encode(), path.read_bytes())]
    return digest(*parts)


def digest(*parts: bytes) -> str:
    """A short sha256 of ``parts``, each length-prefixed so ("ab", "c") and ("a", "bc") differ."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:16]


def pack(source: Source, directory: Path) -> Path:
    """Write the wheel of an installed ``source`` into ``directory``; its path.

    A wheel is a zip of the installed files plus a RECORD of their sha256 digests (PEP 427), which is all pip
    checks when it installs it.
    """
    if source.tree is not None:
        raise ValueError("pack() makes a wheel from installed files; build a source tree with pip wheel")
    info = next(name.split("/")[0] for name, _ in source.files if name.endswith(".dist-info/METADATA"))
    target = directory / f"{NAME}-{source.version}-{source.wheel_tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, path in source.files:
            data = path.read_bytes()
            _add(wheel, name, data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
            hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={hashed},{len(data)}")
        record.append(f"{info}/RECORD,,")
        _add(wheel, f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0o644)
    return target


def _add(wheel: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    entry = zipfile.ZipInfo(name, _EPOCH)
    entry.external_attr = (0o100000 | mode) << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    wheel.writestr(entry, data)
