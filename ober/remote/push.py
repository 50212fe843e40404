"""What a node has versus what the inventory renders for it: drift, diff, and pushing the config.

The workstation renders each node's files (:func:`ober.build.build_node`, unchecked: the node checks with its own
HAProxy). The node reports each of its files' mode and SHA-256 (a small read-only script run by the node's own
Python), so drift is known without copying a file; a diff fetches only the non-secret files that differ. A file
that holds a secret (mode 600) is compared by hash and never shown.

A push uploads the rendered ``ober.yaml`` and the secrets it references (mode 600) to temporary files next to
their places, then runs ``ober config --from FILE --replace`` on the node, which validates, backs up, swaps in,
reloads hitlessly, verifies and rolls back on failure; the secrets file is moved into place only when that
succeeded. A config change never withdraws the node: HAProxy and ExaBGP are reloaded, not restarted.
"""

from __future__ import annotations

import contextlib
import json
import secrets as tokens
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import yaml

from ober.apply import Change, diff, manifest_path
from ober.build import build_node
from ober.config import NodeConfig, dump_config
from ober.errors import OberError, SecretsError
from ober.inventory import InventoryNode
from ober.remote.nodeclient import MAX_PROBLEM, MAX_PROBLEMS, NodeClient, NotReady, config_file, ober_program
from ober.render import Rendered, paths
from ober.runner import Result, Runner
from ober.secrets import pick

FACTS_TIMEOUT = 60.0
APPLY_TIMEOUT = 300.0
"""``ober config`` on a node: haproxy -c, ExaBGP's check, reloads and verification."""
SETTLE_TIMEOUT = 30.0
"""After a push, how long a node that was live may take to be live again before the push counts as failed."""
SECRET_MODE = 0o600

# Runs on the node with its own Python: each path's mode and SHA-256 (None: missing), plus the paths ober's
# manifest owns, so files a push would remove show up too. Reads only.
_FILES_SCRIPT = """
import hashlib, json, os, sys
manifest, wanted = sys.argv[1], sys.argv[2:]
try:
    with open(manifest) as handle:
        owned = [p for p in json.load(handle) if isinstance(p, str) and p.startswith("/")]
except (OSError, ValueError, TypeError):
    owned = []
seen = {}
for path in sorted(set(wanted) | set(owned)):
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        seen[path] = [os.stat(path).st_mode & 0o777, digest]
    except FileNotFoundError:
        seen[path] = None
    except OSError as exc:
        seen[path] = str(exc.strerror)
print(json.dumps(seen))
"""


class PushError(OberError):
    """A push or a read of a node's files failed (the node keeps its previous config)."""


@dataclass(frozen=True)
class Deployed:
    """One file on a node: its mode and content hash; ``problem`` when it exists but could not be read."""

    mode: int | None
    sha256: str | None
    problem: str | None = None


def python_program(node: InventoryNode) -> str:
    """The Python of the node's venv (ober's own, so it exists wherever ober does)."""
    return paths(node.config)["python"]


def secrets_file(node: InventoryNode) -> str:
    """Where the fleet keeps a node's secrets on the node."""
    return paths(node.config)["login"]


def render(node: InventoryNode, secrets: Mapping[str, str]) -> tuple[Rendered, list[str]]:
    """The node's files as the inventory renders them, and the secret names that were stood in for.

    Without a secret the files that hold it are rendered with a placeholder, so the other files still compare;
    the caller treats secret files as unknown then.
    """
    names = node.config.secret_names()
    missing = [name for name in names if name not in secrets]
    values = {**{name: "unknown" for name in missing}, **{n: secrets[n] for n in names if n in secrets}}
    return build_node(node.config, values, check=False).rendered, missing


def deployed_files(conn: Runner, node: InventoryNode, rendered: Rendered) -> dict[str, Deployed]:
    """Each rendered file's (and each manifest-owned file's) mode and hash on the node.

    Raises:
        PushError: the node's Python did not run or answered something else.
    """
    argv = [
        python_program(node),
        "-c",
        _FILES_SCRIPT,
        manifest_path(node.config.install_path),
        *(item.path for item in rendered.files),
    ]
    result = conn.run(argv, timeout=FACTS_TIMEOUT)
    if not result.ok:
        raise PushError(f"{node.name}: cannot read its files: {result.last_line()[:200]}", "is ober installed there?")
    try:
        data = json.loads(result.stdout)
        if not isinstance(data, dict):
            raise ValueError
        return {str(path): _deployed(value) for path, value in data.items()}
    except (ValueError, TypeError):
        raise PushError(f"{node.name}: unexpected answer when reading its files") from None


def _deployed(value: object) -> Deployed:
    if value is None:
        return Deployed(None, None)
    if isinstance(value, str):
        return Deployed(None, None, value[:100])
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
        and len(value[1]) == 64
    ):
        return Deployed(value[0], value[1])
    raise TypeError("bad entry")


@dataclass(frozen=True)
class Drift:
    """How a node's files differ from the rendered ones."""

    changed: list[str] = field(default_factory=list)
    """Files whose content or mode differ, missing ones included."""
    removed: list[str] = field(default_factory=list)
    """Files ober wrote earlier that the render no longer has (a push removes them)."""
    unknown: list[str] = field(default_factory=list)
    """Secret files not compared (no secrets here) or files the node could not read."""

    @property
    def drifted(self) -> bool:
        """Something differs."""
        return bool(self.changed or self.removed)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"drifted": self.drifted, "changed": self.changed, "removed": self.removed, "unknown": self.unknown}


def compare(rendered: Rendered, deployed: Mapping[str, Deployed], *, unknown_secrets: bool = False) -> Drift:
    """Drift between the rendered files and the node's (pure)."""
    changed: list[str] = []
    unknown: list[str] = []
    wanted = {item.path for item in rendered.files}
    for item in rendered.files:
        have = deployed.get(item.path, Deployed(None, None))
        # Unknown: unreadable there, or a secret file whose secrets are not here to render it with.
        if have.problem or (unknown_secrets and item.mode == SECRET_MODE and have.sha256 is not None):
            unknown.append(item.path)
        elif have.sha256 != item.sha256 or have.mode != item.mode:
            changed.append(item.path)
    removed = sorted(path for path, have in deployed.items() if path not in wanted and have.sha256 is not None)
    return Drift(changed, removed, unknown)


def node_drift(conn: Runner, node: InventoryNode, secrets: Mapping[str, str]) -> Drift:
    """Drift of one node against the inventory (secret files unknown when their secrets are not here)."""
    rendered, missing = render(node, secrets)
    return compare(rendered, deployed_files(conn, node, rendered), unknown_secrets=bool(missing))


def node_diff(conn: Runner, node: InventoryNode, secrets: Mapping[str, str]) -> tuple[Drift, str]:
    """The drift and a unified diff of what a push would change; secret files say only that they change."""
    rendered, missing = render(node, secrets)
    deployed = deployed_files(conn, node, rendered)
    drift = compare(rendered, deployed, unknown_secrets=bool(missing))
    changes: list[Change] = []
    for path in drift.changed:
        new = rendered.file(path)
        old = _fetch(conn, node, path, deployed[path], new.mode)
        changes.append(Change(path, old, new))
    for path in drift.removed:
        changes.append(Change(path, _fetch(conn, node, path, deployed[path], None), None))
    return drift, diff(sorted(changes, key=lambda change: change.path))


def _fetch(conn: Runner, node: InventoryNode, path: str, have: Deployed, new_mode: int | None) -> str | None:
    """The node's file, when it may be shown; a placeholder for a secret; None when it does not exist."""
    if have.sha256 is None:
        return None
    if have.mode == SECRET_MODE or new_mode == SECRET_MODE:
        return "(secret file: contents not shown)\n"
    result = conn.run(["cat", "--", path], timeout=FACTS_TIMEOUT)
    if not result.ok:
        raise PushError(f"{node.name}: cannot read {path}: {result.last_line()[:200]}")
    return result.stdout


class Uploader(Runner, Protocol):
    """What a push needs of a connection: run commands and write files atomically (``Connection`` is one)."""

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        """Write ``data`` to ``remote`` atomically with ``mode``."""
        ...


@dataclass(frozen=True)
class PushResult:
    """What pushing to one node did (or, on a dry run, would do)."""

    node: str
    ok: bool
    dry_run: bool
    changes: list[dict[str, str]] = field(default_factory=list)
    """Each changed path and how (``create``, ``update``, ``remove``), as the node reported it."""
    actions: list[str] = field(default_factory=list)
    """Services reloaded (``reload ober-http``…)."""
    error: str | None = None
    fix: str | None = None
    seconds: float = 0.0
    degraded: list[str] = field(default_factory=list)
    """How the node's HAProxy serves less than its config after the apply (``ober config``'s ``degraded``)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "node": self.node,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "changes": self.changes,
            "actions": self.actions,
            "error": self.error,
            "fix": self.fix,
            "seconds": round(self.seconds, 2),
            "degraded": self.degraded,
        }


def node_files(config: NodeConfig, secrets: Mapping[str, str]) -> tuple[bytes, bytes]:
    """The node's ``ober.yaml`` and its secrets file (only the secrets it references), as uploaded."""
    try:
        wanted = pick(secrets, config.secret_refs())
    except SecretsError as exc:
        raise PushError(f"node {config.name}: {exc.message}", exc.fix) from None
    return dump_config(config).encode(), yaml.safe_dump(wanted).encode()


def push_node(
    conn: Uploader,
    node: InventoryNode,
    secrets: Mapping[str, str],
    dry_run: bool,
    *,
    settle: float = SETTLE_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    allow_degraded: bool = False,
) -> PushResult:
    """Push the inventory's config to one node: validated, applied, reloaded hitlessly, verified, or rolled back.

    A node that was live before must be live again within ``settle`` seconds, or the push counts as failed (the
    node's own verification covers HAProxy; this covers BGP). A node whose HAProxy then serves degraded fails the
    push too, unless ``allow_degraded`` (:func:`refuse_degraded`). Never raises for a node's failure: the result
    says.
    """
    started = time.monotonic()
    try:
        config_text, login_text = node_files(node.config, secrets)
    except PushError as exc:
        return PushResult(node.name, False, dry_run, error=exc.message, fix=exc.fix)
    client = NodeClient(conn, node, sleep=sleep)
    before = client.status() if not dry_run else None
    etc = paths(node.config)["etc"]
    suffix = tokens.token_hex(4)
    staged_config, staged_login = f"{etc}/.ober-push-{suffix}.yaml", f"{etc}/.login-push-{suffix}"
    try:
        conn.put(config_text, staged_config, 0o644, timeout=FACTS_TIMEOUT)
        conn.put(login_text, staged_login, SECRET_MODE, timeout=FACTS_TIMEOUT)
        argv = [
            ober_program(node),
            "config",
            "--config",
            config_file(node),
            "--from",
            staged_config,
            "--replace",
            "--secrets",
            staged_login,
            "--json",
        ]
        result = conn.run([*argv, "--dry-run"] if dry_run else argv, timeout=APPLY_TIMEOUT)
        outcome = config_outcome(node, result)
        if outcome.ok and not dry_run:
            moved = conn.run(["mv", "-f", "--", staged_login, secrets_file(node)], timeout=FACTS_TIMEOUT)
            if not moved.ok:
                raise PushError(
                    f"{node.name}: config applied but the secrets file was not updated: {moved.last_line()}"
                )
            if before is not None and before.live:
                try:
                    client.wait_until_live(settle)
                except NotReady as exc:
                    outcome = PushResult(
                        node.name,
                        False,
                        dry_run,
                        outcome.changes,
                        outcome.actions,
                        error=f"{node.name}: applied, but it is not live any more ({'; '.join(exc.problems)})",
                        fix="check 'ober fleet status' and the node's journal (ober logs)",
                    )
    except OberError as exc:
        outcome = PushResult(node.name, False, dry_run, error=exc.message, fix=exc.fix)
    finally:
        # If the connection is gone the node keeps a temp file, which the next push does not need.
        with contextlib.suppress(OberError):
            conn.run(["rm", "-f", "--", staged_config, staged_login], timeout=FACTS_TIMEOUT)
    pushed = PushResult(
        outcome.node,
        outcome.ok,
        dry_run,
        outcome.changes,
        outcome.actions,
        outcome.error,
        outcome.fix,
        time.monotonic() - started,
        outcome.degraded,
    )
    return refuse_degraded(pushed, allow_degraded)


def refuse_degraded(result: PushResult, allow: bool) -> PushResult:
    """A successful result whose node serves degraded, as a failure naming the problems (unless ``allow``).

    The config stays applied on that node (it is what the inventory says; rolling back would not fix a name that
    does not resolve), but the push stops there, so the nodes after it do not get the same problem.
    """
    if not result.ok or not result.degraded or allow:
        return result
    shown = "; ".join(result.degraded[:3]) + (
        f"; and {len(result.degraded) - 3} more" if len(result.degraded) > 3 else ""
    )
    return replace(
        result,
        ok=False,
        error=f"{result.node}: applied, but HAProxy serves degraded: {shown}",
        fix="fix the inventory and push again (or pass --allow-degraded to accept it)",
    )


def config_outcome(node: InventoryNode, result: Result) -> PushResult:
    """A PushResult from the JSON `ober config` (or `ober sync`) printed on a node."""
    try:
        data = json.loads(result.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return PushResult(node.name, False, False, error=f"{node.name}: ober config failed: {result.last_line()[:300]}")
    if not result.ok or "error" in data:
        return PushResult(
            node.name,
            False,
            False,
            error=f"{node.name}: {str(data.get('error') or result.last_line())[:300]}",
            fix=str(data["fix"])[:200] if data.get("fix") else None,
        )
    changes = data.get("changes")
    actions = data.get("actions")
    degraded = data.get("degraded", [])  # absent from an older ober on the node: it did not look
    if not isinstance(changes, list) or not isinstance(actions, list) or not isinstance(degraded, list):
        return PushResult(node.name, False, False, error=f"{node.name}: ober config answered something unexpected")
    return PushResult(
        node.name,
        True,
        False,
        changes=[{"path": str(c.get("path")), "change": str(c.get("change"))} for c in changes if isinstance(c, dict)],
        actions=[str(action) for action in actions],
        degraded=[str(line)[:MAX_PROBLEM] for line in degraded[:MAX_PROBLEMS]],
    )
