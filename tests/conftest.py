"""Shared fixtures: the example configs, secrets, and the Debian 13 image holding HAProxy 3.0."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.config import NodeConfig, parse_node_config
from ober.errors import OberError
from ober.facts import find_program
from ober.lab.image import DEFAULT_IMAGE, ensure_image
from ober.lab.netns import Lab
from ober.lab.rgw import missing_programs
from ober.lab.site import Site, start_site
from ober.validate import Tool

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
SECRETS = {"bgp_md5": "md5-Pa55word", "stats_password": "st4ts-Pa55word"}


def require(condition: bool, reason: str) -> None:
    """Skip when a real tool is missing, except in CI (OBER_REQUIRE_LAB=1), where that is a failure."""
    if condition:
        return
    if os.environ.get("OBER_REQUIRE_LAB") == "1":
        pytest.fail(f"required for this run (OBER_REQUIRE_LAB=1): {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def lab_site(nodes: int) -> Iterator[Site]:
    """A running lab site of ``nodes`` process nodes (ober.lab.site), stopped at the end; skipped without its tools."""
    require(os.geteuid() == 0, "the lab needs root (network namespaces)")
    for program in ("bird", "haproxy", "exabgp", "openssl"):
        require(find_program(program) is not None, f"{program} is not installed")
    require(not missing_programs(), f"Ceph is not installed: {missing_programs()}")
    with Lab() as lab:
        try:
            site = start_site(lab, nodes)
        except OberError as exc:
            pytest.fail(exc.message)
        yield site


@pytest.fixture
def node_data() -> dict[str, Any]:
    """The full example node config as a mutable mapping."""
    data: dict[str, Any] = yaml.safe_load((DATA / "node.yaml").read_text())
    return copy.deepcopy(data)


@pytest.fixture
def make_config(node_data: dict[str, Any]) -> Callable[..., NodeConfig]:
    """Build a config from the example with top-level keys replaced."""

    def make(**changes: Any) -> NodeConfig:
        data = copy.deepcopy(node_data)
        data.update(changes)
        return parse_node_config(data)

    return make


@pytest.fixture(scope="session")
def haproxy30() -> Tool:
    """HAProxy 3.0 from the cached Debian 13 image (built on first use; needs root and debootstrap)."""
    require(os.geteuid() == 0, "the HAProxy 3.0 image needs root (chroot)")
    require(shutil.which("debootstrap") is not None or (DEFAULT_IMAGE / ".ober-image").exists(), "no debootstrap")
    try:
        image = ensure_image()
    except OberError as exc:
        require(False, f"cannot build the Debian 13 image: {exc}")
        raise
    return Tool(("haproxy",), chroot=image)


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory short enough for an install path (ober caps it at 64 characters: Unix socket paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="ober-"))
    yield path
    shutil.rmtree(path)
