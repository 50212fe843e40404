"""Changing a node's configuration without the wizard: ``--from FILE`` and ``--set key=value``.

The edited mapping is validated as a whole before anything is written; a bad value leaves the node untouched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ober.acme_node import ensure_placeholder
from ober.apply import Change, apply, plan
from ober.build import build_node
from ober.config import NodeConfig, parse_node_config, read_yaml
from ober.errors import ConfigError
from ober.haproxy_state import after_reload, node_degraded, worker_pid
from ober.inventory import merge
from ober.render import paths
from ober.schema import load_yaml
from ober.secrets import load_secrets
from ober.services import reload_for, run_actions
from ober.validate import missing_users

_KEY = re.compile(r"^[a-z_][a-z0-9_-]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_-]*(?:\[\d+\])?)*\Z")


def parse_assignment(text: str) -> tuple[list[str | int], Any]:
    """``bgp.hold_time=5`` or ``vips[0].address=198.51.100.10`` → (path, value); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        # Never the value (--set bgp.md5_secret=… may hold a secret); without '=' the whole argument may be one.
        shown = f"{key!r}" if sep else "an argument without '='"
        raise ConfigError(
            f"--set {shown}: expected key=value, e.g. bgp.hold_time=5 or vips[0].backend=ceph-a",
            "keys are dotted names as in ober.yaml",
        )
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except (yaml.YAMLError, ConfigError):
        raise ConfigError(f"--set {key}: the value is not valid YAML", "quote it, e.g. --set 'name=\"x\"'") from None
    path: list[str | int] = []
    for part in key.split("."):
        name, _, index = part.partition("[")
        path.append(name)
        if index:
            path.append(int(index.rstrip("]")))
    return path, value


def assign(data: dict[str, Any], path: list[str | int], value: Any, key: str) -> None:
    """Set ``value`` at ``path`` inside ``data``, creating mappings on the way; list items must exist.

    ``key`` is the dotted key as typed, for errors (never the value: it may be a secret).
    """
    node: Any = data
    for step, following in zip(path, [*path[1:], None], strict=True):
        last = following is None
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                raise ConfigError(f"--set {key}: there is no item [{step}] there", "index an existing list item")
            if last:
                node[step] = value
            else:
                node = node[step]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {step!r} is inside something that is not a mapping")
        if last:
            node[step] = value
        else:
            node = node.setdefault(step, [] if isinstance(following, int) else {})


def edited(
    current: dict[str, Any], from_file: Path | None, assignments: Iterable[str], *, replace: bool = False
) -> dict[str, Any]:
    """The current config with a file merged over it (or, with ``replace``, instead of it), then each ``--set``."""
    data = copy.deepcopy(current)
    if from_file is not None:
        incoming = read_yaml(from_file)
        if not isinstance(incoming, dict):
            raise ConfigError(f"{from_file}: expected a mapping at the top level")
        # A whole config from the fleet replaces: merging would keep what it removed (e.g. a backend group).
        data = incoming if replace else merge(data, incoming)
    for text in assignments:
        path, value = parse_assignment(text)
        assign(data, path, value, text.partition("=")[0].strip())
    return data


@dataclass(frozen=True)
class Outcome:
    """What configuring did (or, on a dry run, would do)."""

    changes: list[Change]
    actions: list[str]
    backup: Path | None
    dry_run: bool
    live: bool
    degraded: list[str] = field(default_factory=list)
    """How the running HAProxy serves less than the config asks (see :mod:`ober.haproxy_state`); empty: fully."""

    def summary(self) -> list[dict[str, str]]:
        """Each changed path and how, for ``--json``."""
        return [{"path": change.path, "change": change.kind} for change in self.changes]


def current_data(config_path: Path, root: Path) -> dict[str, Any]:
    """The node's ober.yaml as a mapping (empty when there is none yet)."""
    on_disk = root / str(config_path).lstrip("/")
    if not on_disk.exists():
        return {}
    loaded = read_yaml(on_disk)
    return loaded if isinstance(loaded, dict) else {}


def configure(
    data: dict[str, Any], *, root: Path, secrets_path: Path | None = None, check: bool = True, dry_run: bool = False
) -> Outcome:
    """Validate ``data`` as the node's config, render and check it, then apply it (unless ``dry_run``).

    On ``/`` the services that read changed files are reloaded (HAProxy hitlessly) and HAProxy verified; on
    failure every file is put back. Under another ``root`` (staging) nothing is reloaded.

    Raises:
        ConfigError, SecretsError, RenderError: nothing was written.
        OberError: applying failed and was rolled back.
    """
    config = parse_node_config(data, "new config")
    secrets = load_secrets(secrets_path, required=bool(config.secret_names()))
    built = build_node(config, secrets, check=check)
    changes = plan(built.rendered, root, config.install_path)
    live = root.resolve() == Path("/")
    actions = reload_for(config, [c.path for c in changes]) if live else []
    if dry_run:
        return Outcome(changes, actions, None, dry_run, live)
    # HAProxy refuses a crt directory without a certificate: an ACME node starts on a placeholder until its first.
    ensure_placeholder(config, root)
    if not changes:
        # Unchanged, yet maybe serving less than it says (a server that never resolved): a push must hear it.
        return Outcome(changes, actions, None, False, live, _degraded_now(config) if live else [])
    if live and (missing := missing_users(root)):
        # The units would not start (systemd: no such user; HAProxy: unknown user), the node out of service.
        raise ConfigError(
            f"this node has no {', '.join(missing)}: ober's services run as them",
            "run ober bootstrap (again): it creates them, and changes nothing else that is in place",
        )

    done: list[str] = []
    before: list[int | None] = [None]
    degraded: list[str] = []

    def reload() -> None:
        before[0] = worker_pid(paths(config)["admin_socket"], config.health.timeout)
        done[:] = run_actions(actions, config)

    def verify() -> None:
        if "reload ober-http" in done:  # a stopped HAProxy is not reloaded, so there is nothing to verify
            # Not just "the socket answers": the old worker answers too when the new config failed to load.
            degraded[:] = after_reload(config, before[0])
        elif live:
            degraded[:] = _degraded_now(config)

    owned = [f.path for f in built.rendered.files]
    result = apply(changes, root, config.install_path, owned, reload=reload, verify=verify)
    return Outcome(changes, done, result.backup, False, live, degraded)


def _degraded_now(config: NodeConfig) -> list[str]:
    """The running HAProxy's problems now; [] when it is not running (a stopped node serves nothing less)."""
    return node_degraded(config) or []
