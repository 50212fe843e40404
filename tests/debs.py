"""Package files for upgrade tests, made from the lab image's own packages (nodes have no mirror to upgrade from)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ober.lab.image import DEFAULT_IMAGE


def newer_haproxy_deb(work: Path, dest: Path, suffix: str = "+ober1") -> tuple[Path, str]:
    """The image's HAProxy package again with ``suffix`` added to its version: a stand-in for a point release.

    The binary is the same, but dpkg replaces the file, so a running master's executable is a deleted file until it
    re-executes /usr/sbin/haproxy. Returns the package file (in ``dest``) and its version.
    """
    deb = next((DEFAULT_IMAGE / "var/cache/apt/archives").glob("haproxy_*.deb"))
    tree = work / "haproxy-tree"
    subprocess.run(["rm", "-rf", str(tree)], check=True, timeout=60)
    work.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
    control = tree / "DEBIAN/control"
    old = re.search(r"^Version: (\S+)$", control.read_text(), re.MULTILINE)
    assert old is not None
    version = f"{old.group(1)}{suffix}"
    control.write_text(control.read_text().replace(f"Version: {old.group(1)}", f"Version: {version}"))
    arch = re.search(r"^Architecture: (\S+)$", control.read_text(), re.MULTILINE)
    built = dest / f"haproxy_{version}_{arch.group(1) if arch else 'amd64'}.deb"
    subprocess.run(["dpkg-deb", "-b", str(tree), str(built)], check=True, capture_output=True, timeout=120)
    return built, version
