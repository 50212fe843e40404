"""ober as users install it (pip, pipx, ``uv tool``): the nodes' wheelhouse comes from the installed distribution.

An installed ober has no source tree and, under pipx or uv, no pip of its own. These tests install ober's wheel
(built from this tree) with ``pip install --target`` and let the running code see that install as its own
distribution: the wheel it packs again must be the one it was installed from, with no pip needed for it. The
whole path, a pip-less venv bootstrapping and upgrading a lab node, is in tests/test_install_lab.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from ober.errors import OberError
from ober.remote import ownwheel, wheelhouse
from ober.remote.upgrade import Installer
from ober.wheelpins import write_requirements
from tests.conftest import REPO

PIP_TIMEOUT = 300


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ober's wheel built from this tree, and a ``pip install --target`` of it (laid out as in site-packages)."""
    base = tmp_path_factory.mktemp("installed")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(REPO)], check=True, timeout=PIP_TIMEOUT)
    wheel = next((base / "dist").glob("ober-*.whl"))
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=PIP_TIMEOUT)
    return wheel, site


def use_install(monkeypatch: pytest.MonkeyPatch, site: Path) -> None:
    """Make ``site``'s ober the running ober's distribution, as when ober runs from an installed wheel."""
    dist = importlib.metadata.PathDistribution(next(site.glob("ober-*.dist-info")))
    monkeypatch.setattr(ownwheel, "source_tree", lambda: None)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: dist)


def no_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pip anywhere: not in this Python, not on PATH, no uv or pipx."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("OBER_PIP", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pip" else real(name, *a))


def contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/RECORD")}


def test_an_installed_ober_packs_again_the_wheel_it_was_installed_from(
    installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel, site = installed
    use_install(monkeypatch, site)
    source = ownwheel.find_source()
    assert source.installed and source.version == "0.1.0"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(source.requirements) == sorted(declared)  # the dev extras are not the nodes' business
    packed = ownwheel.pack(source, tmp_path)
    assert packed.name == wheel.name
    assert contents(packed) == contents(wheel)
    assert "ober/templates/haproxy/haproxy.cfg.j2" in contents(packed)
    # `ober fleet init` works from an installed ober: the starter and the example site are in the wheel.
    shipped = contents(packed)
    assert shipped["ober/templates/inventory/example.yaml"] == (REPO / "inventory/example.yaml").read_bytes()
    assert shipped["ober/templates/inventory/starter.yaml"] == (REPO / "templates/inventory/starter.yaml").read_bytes()
    # pip checks every file against the RECORD we wrote: it installs the packed wheel.
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(again), str(packed)],
        check=True,
        timeout=PIP_TIMEOUT,
    )
    assert (again / "ober/remote/wheelhouse.py").read_bytes() == (REPO / "ober/remote/wheelhouse.py").read_bytes()


def test_a_wheelhouse_from_an_installed_ober_needs_no_pip_for_ober_itself(
    installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, site = installed
    use_install(monkeypatch, site)
    no_pip(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    # The dependencies were downloaded by an earlier run (that needs pip, or uv); ober's own wheel needs neither.
    source = ownwheel.find_source()
    key_data = ["3.13", wheelhouse.TARGET_GLIBC, list(source.requirements)]
    deps = cache / f"deps-cp313-{ownwheel.digest(json.dumps(key_data).encode())}"
    deps.mkdir(parents=True)
    (deps / "click-8.1.7-py3-none-any.whl").write_bytes(b"a dependency wheel")
    (deps / wheelhouse.STAMP).write_text("click-8.1.7-py3-none-any.whl\n")
    write_requirements(deps)  # pinned as an earlier run left them
    built = wheelhouse.build_wheelhouse("3.13", cache)
    assert sorted(path.name for path in built.glob("*.whl")) == [
        "click-8.1.7-py3-none-any.whl",
        "ober-0.1.0-py3-none-any.whl",
    ]
    assert wheelhouse.build_wheelhouse("3.13", cache) == built  # cached: the same files give the same key
    # A changed installed file (an upgrade of ober here) is a new wheelhouse.
    changed = tmp_path / "site-changed"
    shutil.copytree(site, changed)
    (changed / "ober/remote/ownwheel.py").write_text("# changed\n")
    use_install(monkeypatch, changed)
    assert wheelhouse.build_wheelhouse("3.13", cache) != built


def test_without_pip_anywhere_the_dependencies_are_one_clear_error(
    installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_install(monkeypatch, installed[1])
    no_pip(monkeypatch, tmp_path)
    with pytest.raises(OberError) as raised:
        wheelhouse.build_wheelhouse("3.13", tmp_path / "cache")
    assert "no pip" in raised.value.message
    assert raised.value.fix is not None and "OBER_PIP" in raised.value.fix and "--wheelhouse" in raised.value.fix
    assert not list((tmp_path / "cache").glob("cp313-*"))  # nothing half-built left behind


def test_the_pinned_exabgp_comes_from_the_installed_metadata(
    installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_install(monkeypatch, installed[1])
    # `ober fleet upgrade` read pyproject.toml next to site-packages and crashed; now it reads the metadata.
    assert Installer.build().wanted == {"ober": "0.1.0", "exabgp": "5.0.15"}


def test_an_install_without_its_record_is_refused_with_a_fix(
    installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "site"
    shutil.copytree(installed[1], broken)
    next(broken.glob("ober-*.dist-info/RECORD")).unlink()
    use_install(monkeypatch, broken)
    with pytest.raises(OberError, match="lists no files") as raised:
        ownwheel.find_source()
    assert raised.value.fix == ownwheel.REINSTALL


def executable(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_pip_is_found_wherever_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_pip(monkeypatch, tmp_path)
    tools = tmp_path / "bin"
    tools.mkdir()
    monkeypatch.setenv("PATH", str(tools))
    pipx = executable(tools, "pipx")
    assert wheelhouse.find_pip() == [str(pipx), "run", "pip"]
    uv = executable(tools, "uv")
    assert wheelhouse.find_pip() == [str(uv), "tool", "run", "--from", "pip", "pip"]
    pip3 = executable(tools, "pip3")
    assert wheelhouse.find_pip() == [str(pip3)]
    monkeypatch.setenv("OBER_PIP", "/opt/tools/bin/python3 -m pip")
    assert wheelhouse.find_pip() == ["/opt/tools/bin/python3", "-m", "pip"]


def test_this_pythons_pip_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBER_PIP", raising=False)
    assert wheelhouse.find_pip() == [sys.executable, "-m", "pip"]


def test_the_default_cache_needs_no_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OBER_WHEELHOUSE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert wheelhouse.default_cache() == tmp_path / ".cache/ober/wheelhouse"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wheelhouse.default_cache() == tmp_path / "xdg/ober/wheelhouse"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert wheelhouse.default_cache() == Path("/var/cache/ober/wheelhouse")
    monkeypatch.setenv("OBER_WHEELHOUSE_CACHE", str(tmp_path / "mine"))
    assert wheelhouse.default_cache() == tmp_path / "mine"


def test_an_unwritable_cache_is_one_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(OberError, match="cannot create the wheelhouse cache") as raised:
        wheelhouse.build_wheelhouse("3.13", blocked / "cache")
    assert raised.value.fix is not None and "OBER_WHEELHOUSE_CACHE" in raised.value.fix
