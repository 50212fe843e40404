"""Pinned wheelhouses: what reaches a node is exactly what the workstation built, checked by pip on the node.

Real pip installs real (tiny) wheels with ``--require-hashes``; a wheel changed after the build is refused both by
the workstation's check and by pip itself.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ober.errors import OberError
from ober.wheelpins import REQUIREMENTS, pinned_install, verify_requirements, wheel_pin, write_requirements


def make_wheel(directory: Path, name: str, version: str, body: str = "VALUE = 1\n") -> Path:
    """A minimal pure-Python wheel pip installs: one module, METADATA, WHEEL and RECORD."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist}/RECORD,,\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", record)
    return wheel


def pip_install(wheels: Path, target: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pip", "install", "-q", "--isolated", "--target", str(target)]
    return subprocess.run([*argv, *pinned_install(str(wheels))], capture_output=True, text=True, timeout=120)


@pytest.fixture
def house(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    make_wheel(wheels, "obertest_a", "1.0")
    make_wheel(wheels, "obertest_b", "2.3.1")
    write_requirements(wheels)
    return wheels


def test_every_wheel_is_pinned_by_version_and_hash(house: Path) -> None:
    lines = (house / REQUIREMENTS).read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["obertest-a==1.0", "obertest-b==2.3.1"]
    assert all(line.split(" ")[1].startswith("--hash=sha256:") for line in lines)
    verify_requirements(house)
    assert wheel_pin(house / "obertest_b-2.3.1-py3-none-any.whl") == ("obertest-b", "2.3.1")


def test_pip_installs_the_pinned_wheels(house: Path, tmp_path: Path) -> None:
    done = pip_install(house, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "obertest_a.py").is_file() and (tmp_path / "site" / "obertest_b.py").is_file()


def test_a_wheel_changed_after_the_build_is_refused_here_and_by_pip_on_the_node(house: Path, tmp_path: Path) -> None:
    (house / "obertest_b-2.3.1-py3-none-any.whl").unlink()
    make_wheel(house, "obertest_b", "2.3.1", body="import os  # not what was built\n")
    with pytest.raises(OberError, match=r"obertest-b 2\.3\.1 was changed since the wheelhouse was built"):
        verify_requirements(house)
    done = pip_install(house, tmp_path / "site")
    assert done.returncode != 0 and "DO NOT MATCH THE HASHES" in done.stderr
    assert not (tmp_path / "site" / "obertest_b.py").exists()


def test_a_wheel_added_or_missing_is_refused(house: Path) -> None:
    extra = make_wheel(house, "obertest_c", "0.1")
    with pytest.raises(OberError, match=r"obertest-c 0\.1 was added"):
        verify_requirements(house)
    extra.unlink()
    (house / "obertest_a-1.0-py3-none-any.whl").unlink()
    with pytest.raises(OberError, match=r"obertest-a 1\.0 is missing"):
        verify_requirements(house)
    (house / REQUIREMENTS).unlink()
    with pytest.raises(OberError, match="not a pinned wheelhouse"):
        verify_requirements(house)


def test_the_fleet_upgrade_ships_the_pins_with_the_wheels(
    house: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tarfile

    from ober.remote import upgrade

    monkeypatch.setattr(upgrade, "build_wheelhouse", lambda python, arch: house)
    archive = upgrade.Installer({"ober": "0.1.0"})._archive("3.13", "x86_64")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path / "node", filter="data")
    # What the node unpacks is a pinned wheelhouse pip can check (the same as built here).
    verify_requirements(tmp_path / "node")
    assert pip_install(tmp_path / "node", tmp_path / "site").returncode == 0
