"""Changing a node's configuration without the wizard: ``--from FILE`` and ``--set key=value``.

The edited mapping is validated as a whole before anything is written; a bad value leaves the node untouched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ober.config import read_yaml
from ober.errors import ConfigError
from ober.inventory import merge

_KEY = re.compile(r"^[a-z_][a-z0-9_-]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_-]*(?:\[\d+\])?)*\Z")


def parse_assignment(text: str) -> tuple[list[str | int], Any]:
    """``bgp.hold_time=5`` or ``vips[0].address=198.51.100.10`` → (path, value); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(
            f"--set {text!r}: expected key=value, e.g. bgp.hold_time=5 or vips[0].backend=ceph-a",
            "keys are dotted names as in ober.yaml",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: the value is not valid YAML", "quote it, e.g. --set 'name=\"x\"'") from None
    path: list[str | int] = []
    for part in key.split("."):
        name, _, index = part.partition("[")
        path.append(name)
        if index:
            path.append(int(index.rstrip("]")))
    return path, value


def assign(data: dict[str, Any], path: list[str | int], value: Any, text: str) -> None:
    """Set ``value`` at ``path`` inside ``data``, creating mappings on the way; list items must exist."""
    node: Any = data
    for step, following in zip(path, [*path[1:], None], strict=True):
        last = following is None
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise ConfigError(f"--set {text}: there is no item [{step}] there", "index an existing list item")
            if last:
                node[step] = value
            else:
                node = node[step]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text}: {step!r} is inside something that is not a mapping")
        if last:
            node[step] = value
        else:
            node = node.setdefault(step, [] if isinstance(following, int) else {})


def edited(current: dict[str, Any], from_file: Path | None, assignments: Iterable[str]) -> dict[str, Any]:
    """The current config with a file merged over it and then each ``--set`` applied."""
    data = copy.deepcopy(current)
    if from_file is not None:
        incoming = read_yaml(from_file)
        if not isinstance(incoming, dict):
            raise ConfigError(f"{from_file}: expected a mapping at the top level")
        data = merge(data, incoming)
    for text in assignments:
        path, value = parse_assignment(text)
        assign(data, path, value, text)
    return data
