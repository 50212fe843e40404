"""The code's own layout: the node's paths come from one place (``ober.render.paths``), and the checks' modules
import on their own (a newcomer, or a test, may import any of them first)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ober.apply import manifest_path
from ober.bootstrap.facts import wanted_dirs
from ober.bootstrap.ledger import ledger_path
from ober.bootstrap.plan import next_hint
from ober.config import NodeConfig
from ober.healthd import state_file
from ober.inventory import InventoryNode
from ober.remote.nodeclient import config_file, ober_program
from ober.remote.preflight import probe_argv
from ober.remote.push import python_program, secrets_file
from ober.render import install_paths, paths

PACKAGE = Path(__file__).resolve().parent.parent / "ober"
INSTALL = "/srv/s3gw"

# Fragments of the node's layout under the install path: only render.py spells them out.
NODE_LAYOUT = re.compile(
    r"/etc/ober\.yaml|/venv/bin/|/run/health|/etc/login|haproxy\.sock|health\.sock|\.ober-manifest"
    r"|\.bootstrap\.json|/etc/certs|/opt/ober|/etc/secrets\.env|/etc/maintenance|/etc/whitelist"
)
# The config's own defaults (paths() reads them; config cannot import render, which imports it).
DEFAULTS = {"config.py"}
# Examples shown to a user in a message or a question ("e.g. /opt/ober/etc/certs/s3.pem").
EXAMPLE = re.compile(r"e\.g\.|such as")


def test_a_node_installed_elsewhere_is_driven_at_its_own_paths(make_config: Callable[..., NodeConfig]) -> None:
    config = make_config(install_path=INSTALL)
    node = InventoryNode("node01", "all", "198.51.100.11", config)
    p = paths(config)
    # What the fleet runs and writes on the node.
    assert ober_program(node) == p["ober"] == f"{INSTALL}/venv/bin/ober"
    assert config_file(node) == p["config"] == f"{INSTALL}/etc/ober.yaml"
    assert python_program(node) == p["python"] == f"{INSTALL}/venv/bin/python"
    assert secrets_file(node) == p["login"] == f"{INSTALL}/etc/login"
    assert probe_argv(INSTALL)[-1] == p["ober"]
    # What the node's own ober keeps there.
    assert manifest_path(INSTALL) == p["manifest"] == f"{INSTALL}/etc/.ober-manifest.json"
    assert str(ledger_path(INSTALL)) == p["ledger"] == f"{INSTALL}/etc/.bootstrap.json"
    assert str(state_file(config)) == p["health_state"] == f"{INSTALL}/run/health/health.json"
    assert wanted_dirs(INSTALL)[p["certs_dir"]] == 0o700
    assert f"{INSTALL}/venv/bin/ober config -c {INSTALL}/etc/ober.yaml" in next_hint(INSTALL, "networkd")
    every = [value for key, value in p.items() if key not in ("crt", "maintenance_file", "metrics_socket")]
    assert all(value == INSTALL or value.startswith(f"{INSTALL}/") for value in every), p


def test_paths_are_install_paths_plus_what_the_config_decides(make_config: Callable[..., NodeConfig]) -> None:
    config = make_config(install_path=INSTALL)
    layout = install_paths(INSTALL, "/scratch")
    scratch = paths(config, "/scratch")
    assert {key: scratch[key] for key in layout if key != "maintenance_file"} == {
        key: value for key, value in layout.items() if key != "maintenance_file"
    }
    assert scratch["crt"] == "/scratch" + config.certificates.crt_path(INSTALL)
    assert scratch["maintenance_file"] == "/scratch" + config.health.maintenance_file


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant but docstrings (prose may name paths)."""
    prose: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            prose.update(
                id(stmt.value)
                for stmt in node.body
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            )
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


def test_node_paths_are_spelled_out_only_in_render() -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text[:80]!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in DEFAULTS and path != PACKAGE / "render.py"
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
        if NODE_LAYOUT.search(text) and not EXAMPLE.search(text)
    ]
    assert not found, "use ober.render.paths()/install_paths() instead:\n" + "\n".join(found)


def test_the_scan_sees_a_hard_coded_path() -> None:
    tree = ast.parse('"""Lives in /opt/ober."""\nPROGRAM = f"{install}/venv/bin/ober"\n')
    assert [text for _, text in _strings(tree) if NODE_LAYOUT.search(text)] == ["/venv/bin/ober"]


def test_each_checks_module_imports_on_its_own() -> None:
    modules = sorted(
        f"ober.checks.{path.stem}" for path in (PACKAGE / "checks").glob("*.py") if path.stem != "__init__"
    )
    assert {"ober.checks.base", "ober.checks.host", "ober.checks.bgp", "ober.checks.rgw"} <= set(modules)
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    # A fresh interpreter for each, so none rides on another's imports (a cycle shows as an ImportError).
    for first in ["ober.certs", "ober.certswap", *modules]:
        done = subprocess.run(
            [sys.executable, "-c", script, first], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"import {first}:\n{done.stderr[-2000:]}"
