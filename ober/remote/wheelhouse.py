"""A wheelhouse for the nodes: ober's own wheel and every runtime dependency, built for the node's Python.

Lab nodes (and, later, real nodes behind a firewall) have no route to PyPI, so they install ober with
``pip install --no-index --find-links WHEELHOUSE ober``. Everything here runs on the workstation, whose Python
may differ from the node's (3.11 here, 3.13 on Debian 13): ``pip download`` is told the node's Python, ABI and
platforms, so it fetches wheels the node can use, never ones for this machine.

ober's own wheel is the running ober's (`ober.remote.ownwheel`): built from its source tree in a checkout, packed
again from the installed files otherwise; its dependencies are the ones that ober declares (ExaBGP pinned). pip is
found wherever it is (`find_pip`): ober installed with pipx or ``uv tool`` has none in its own environment.

Two caches under ``dest`` (`default_cache`: no root needed), each built in a temporary directory and renamed into
place when complete:

- ``deps-cp313-<key>``: the dependencies, keyed by the node's Python, architecture, glibc and ober's
  dependency list (downloading them takes seconds; they change rarely);
- ``cp313-ober<version>-<key>``: the wheelhouse itself, keyed by that and a hash of ober's files, so a node
  always gets the code being tested while a second call with unchanged sources returns at once. It holds hard
  links to the dependency wheels, so each source change costs only ober's own wheel (about 100 KiB).

Each holds ``requirements.txt`` (:mod:`ober.wheelpins`): every wheel's exact version and SHA-256, written when it
is built and checked again before a cached one is used; nodes install from it with ``pip --require-hashes``.

A dependency PyPI has only as an sdist (python-hostlist) is built here with ``pip wheel --no-deps``; that is only
accepted when the result is pure Python (``*-none-any.whl``), since a compiled wheel built here would be for this
machine's Python, not the node's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ober.errors import OberError
from ober.remote.ownwheel import Source, digest, find_source, pack, source_digest
from ober.wheelpins import verify_requirements, write_requirements

__all__ = ["build_wheelhouse", "default_cache", "find_pip", "platforms", "source_digest"]

# Debian 13's glibc: every manylinux wheel for this glibc or older runs on the node.
TARGET_GLIBC = (2, 41)
# The machines manylinux wheels exist for that ober supports (``platform.machine()`` on the node).
ARCHITECTURES = ("x86_64", "aarch64")
DOWNLOAD_TIMEOUT = 600.0
BUILD_TIMEOUT = 300.0
PROBE_TIMEOUT = 30.0
# Each missing wheel costs one retry; more sdist-only dependencies than this means something else is wrong.
MAX_LOCAL_BUILDS = 8
STAMP = "WHEELS"
NO_PIP_FIX = (
    "install pip or uv here (e.g. apt install python3-pip), set OBER_PIP to a pip command, "
    "or pass --wheelhouse DIR built elsewhere"
)
_MISSING = re.compile(r"No matching distribution found for (\S+)")
_PYTHON = re.compile(r"^3\.(\d+)$")


def default_cache() -> Path:
    """Where wheelhouses are kept: ``$OBER_WHEELHOUSE_CACHE``; else /var/cache/ober for root, the user's cache else.

    A workstation user is rarely root: their cache is ``$XDG_CACHE_HOME/ober/wheelhouse`` (``~/.cache/…``).
    """
    configured = os.environ.get("OBER_WHEELHOUSE_CACHE")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/ober/wheelhouse")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ober" / "wheelhouse"


def find_pip() -> list[str]:
    """The command that runs pip: ``$OBER_PIP``, this Python's pip, a pip on PATH, ``uv``'s or ``pipx``'s.

    pipx and ``uv tool`` make ober's environment without pip; the wheels are for the node's Python anyway
    (``pip download --python-version``), so any pip will do.

    Raises:
        OberError: none of them is here.
    """
    configured = os.environ.get("OBER_PIP")
    if configured:
        return shlex.split(configured)
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    python3 = shutil.which("python3")
    if python3 and _works([python3, "-m", "pip"]):
        return [python3, "-m", "pip"]
    uv = shutil.which("uv")
    if uv:
        return [uv, "tool", "run", "--from", "pip", "pip"]
    pipx = shutil.which("pipx")
    if pipx:
        return [pipx, "run", "pip"]
    raise OberError("no pip to build the nodes' wheelhouse with (ober's own environment has none)", NO_PIP_FIX)


def _works(command: Sequence[str]) -> bool:
    try:
        return (
            subprocess.run([*command, "--version"], capture_output=True, timeout=PROBE_TIMEOUT, check=False).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_wheelhouse(
    target_python: str = "3.13",
    dest: Path | None = None,
    *,
    project: Path | None = None,
    glibc: tuple[int, int] = TARGET_GLIBC,
    arch: str = "x86_64",
    source: Source | None = None,
) -> Path:
    """Return a directory of wheels from which ``pip install --no-index`` installs ober on the target Python.

    Args:
        target_python: the node's Python, ``3.MINOR`` (CPython, Linux).
        dest: the cache directory (default: :func:`default_cache`); the wheelhouse is a subdirectory named by
            what it was built from.
        project: ober's source tree (default: the running ober's, else its installed files).
        glibc: the node's glibc version, the newest manylinux tag its wheels may carry.
        arch: the node's machine (``platform.machine()``): one of `ARCHITECTURES`.
        source: where ober's own wheel comes from (default: :func:`ober.remote.ownwheel.find_source`).

    Raises:
        OberError: a bad Python version or architecture, no pip, or pip failing (its last line is quoted).
    """
    match = _PYTHON.match(target_python)
    if match is None:
        raise OberError(f"unsupported target Python {target_python!r}", "give it as 3.MINOR, e.g. 3.13")
    if arch not in ARCHITECTURES:
        raise OberError(f"unsupported architecture {arch!r}", f"ober's nodes run on {' or '.join(ARCHITECTURES)}")
    tag = f"cp3{match.group(1)}"
    label = tag if arch == "x86_64" else f"{tag}-{arch}"
    source = source or find_source(project)
    dependencies = list(source.requirements)
    dest = dest or default_cache()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OberError(
            f"cannot create the wheelhouse cache {dest}: {exc.strerror}",
            "set OBER_WHEELHOUSE_CACHE to a writable directory",
        ) from None

    # x86_64 keeps the key it had before architectures were named, so existing caches stay valid.
    key_data: list[object] = [target_python, glibc, dependencies, *([] if arch == "x86_64" else [arch])]
    deps_key = digest(json.dumps(key_data).encode())
    final = dest / f"{label}-ober{source.version}-{digest(deps_key.encode(), source.digest.encode())}"
    if (final / STAMP).is_file():
        verify_requirements(final)  # a cached wheelhouse is pushed only as it was built
        return final
    pip: list[str] | None = None
    deps = dest / f"deps-{label}-{deps_key}"
    if not (deps / STAMP).is_file():
        pip = find_pip()
        with _building(deps) as work:
            _download(pip, dependencies, work, target_python, tag, glibc, arch)
            # Pinned as downloaded (pip checked PyPI's TLS): a later change to the cache is caught below.
            write_requirements(work)
    verify_requirements(deps)
    with _building(final) as work:
        if source.tree is None:
            pack(source, work)  # from the installed files: no pip, no build backend
        else:
            pip = pip or find_pip()
            argv = ["wheel", "--no-deps", "--wheel-dir", str(work), *_isolation(pip), str(source.tree)]
            _pip(pip, argv, BUILD_TIMEOUT)
        for wheel in deps.glob("*.whl"):
            # Hard links: each wheelhouse costs only ober's wheel; a copy when the cache spans filesystems.
            try:
                os.link(wheel, work / wheel.name)
            except OSError:
                shutil.copy2(wheel, work / wheel.name)
        # Every wheel's exact version and hash: the node installs with pip --require-hashes from this file.
        write_requirements(work)
    return final


def _download(
    pip: Sequence[str],
    requirements: Sequence[str],
    work: Path,
    target_python: str,
    tag: str,
    glibc: tuple[int, int],
    arch: str,
) -> None:
    """Download wheels of ``requirements`` and their dependencies for the target into ``work``."""
    target = ["--python-version", target_python, "--implementation", "cp"]
    target += [arg for abi in (tag, "abi3", "none") for arg in ("--abi", abi)]
    target += [arg for platform in platforms(glibc, arch) for arg in ("--platform", platform)]
    built: set[str] = set()
    while True:
        # --find-links: the resolver also sees the wheels built here for sdist-only packages.
        argv = ["download", "--dest", str(work), "--find-links", str(work), "--only-binary=:all:", *target]
        done = _pip(pip, [*argv, *requirements], DOWNLOAD_TIMEOUT, check=False)
        if done.returncode == 0:
            return
        missing = _MISSING.search(done.stderr)
        if missing is None or missing.group(1) in built or len(built) >= MAX_LOCAL_BUILDS:
            raise OberError(f"pip download for Python {target_python} failed: {_last_line(done)}")
        requirement = missing.group(1)
        built.add(requirement)
        before = set(work.glob("*.whl"))
        _pip(pip, ["wheel", "--no-deps", "--wheel-dir", str(work), requirement], BUILD_TIMEOUT)
        for wheel in set(work.glob("*.whl")) - before:
            if not wheel.name.endswith("-none-any.whl"):
                raise OberError(
                    f"{requirement} has no wheel for Python {target_python} on PyPI and builds a compiled one",
                    "build it on a machine with the node's Python, or pin a version that has wheels",
                )


def platforms(glibc: tuple[int, int], arch: str = "x86_64") -> list[str]:
    """The platform tags of ``arch`` wheels a system with ``glibc`` can run, newest first.

    pip takes ``--platform`` literally (it does not add the older manylinux tags a newer glibc also runs), so
    every one is listed, the legacy aliases included (aarch64 wheels start at manylinux2014, glibc 2.17).
    """
    major, newest = glibc
    oldest = 5 if arch == "x86_64" else 17
    tags = [f"manylinux_{major}_{minor}_{arch}" for minor in range(newest, oldest - 1, -1)]
    legacy = ("manylinux2014", "manylinux2010", "manylinux1") if arch == "x86_64" else ("manylinux2014",)
    return [*tags, *(f"{name}_{arch}" for name in legacy), "any"]


def _isolation(pip: Sequence[str]) -> list[str]:
    """Build ober's wheel with the hatchling already here when pip runs here too: faster, and no download."""
    here = list(pip[:3]) == [sys.executable, "-m", "pip"]
    return ["--no-build-isolation"] if here and importlib.util.find_spec("hatchling") else []


@contextlib.contextmanager
def _building(final: Path) -> Iterator[Path]:
    """Yield an empty work directory next to ``final``; on success it gets its stamp and becomes ``final``.

    A failed or interrupted build leaves nothing at ``final``. When a parallel run finished the same build first,
    its result is kept and ours is dropped (both are built from the same inputs).
    """
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    work.chmod(0o755)  # like the image: readable, nothing secret in it
    try:
        yield work
        (work / STAMP).write_text("".join(f"{wheel.name}\n" for wheel in sorted(work.glob("*.whl"))))
        try:
            work.rename(final)
        except OSError:
            if not (final / STAMP).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pip(
    pip: Sequence[str], argv: Sequence[str], timeout: float, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [*pip, "--disable-pip-version-check", *argv]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise OberError(f"{pip[0]} is not there", NO_PIP_FIX) from None
    except subprocess.TimeoutExpired:
        raise OberError(f"pip {argv[0]} did not finish in {timeout:g}s", "check that PyPI is reachable") from None
    if check and done.returncode != 0:
        raise OberError(f"pip {argv[0]} failed: {_last_line(done)}")
    return done


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]
