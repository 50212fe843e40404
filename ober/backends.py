"""RGW servers added, drained and removed while HAProxy runs: its runtime API, no reload, no connection cut.

Operators add and retire RGW daemons often (cephadm moves them between hosts). A reload for each would do, but
HAProxy can change its servers in place, so ober does that:

- **add**: each backend group is rendered with spare slots (``server-template _slot 1-N 0.0.0.0:PORT disabled``,
  ``backends.<group>.slots``, default 4). The new server's address goes into a free slot, which is then enabled:
  it is checked, and takes requests. The slot keeps HAProxy's name ``_slotK``; which server it holds is recorded
  (:mod:`ober.slots`). Adding a drained server undrains it.
- **drain**: weight 0. No new requests; what it serves finishes; still checked.
- **remove**: drained first, then (once its requests ended, or after ``wait`` seconds) put in maintenance; it
  stays so in the running HAProxy until the next reload, which no longer has it.

Each command is ONE change and is written to ``ober.yaml`` (``backends.<group>.servers`` and ``drained``) and to the
rendered ``haproxy.cfg`` as well, atomically and checked by ``haproxy -c`` first: the rendered config stays the
source of truth, and a later reload has the same servers in the same states (an added server then gets its own
``server`` line, a drained one ``weight 0``). If the runtime change or its verification fails, the files are put
back and the runtime change undone. Nothing is ever deleted automatically: see :mod:`ober.discovery`.
"""

from __future__ import annotations

import fcntl
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ober.apply import Change, apply, diff, plan
from ober.build import build_node
from ober.config import (
    BackendGroup,
    NodeConfig,
    Server,
    parse_node_config,
    parse_server,
    read_yaml,
    server_order,
)
from ober.errors import ConfigError, OberError
from ober.haproxy_runtime import query
from ober.haproxy_state import Server as Running
from ober.haproxy_state import State, read_state
from ober.render import Rendered, paths
from ober.resolve import resolve_whitelists
from ober.slots import SlotRecord, backend_name, is_slot, read_record, write_record
from ober.validate import check_haproxy, local_run_as

Query = Callable[[str], str]
"""Sends one runtime API command, returns HAProxy's answer."""
Resolve = Callable[[str], str]
"""A host name → the IPv4 address HAProxy is to connect to."""

IDLE_POLL = 0.2


@dataclass(frozen=True)
class Member:
    """One server of a backend group, as ``ober.yaml`` and the running HAProxy see it."""

    group: str
    host: str
    port: int
    listed: bool
    """In ``ober.yaml``'s servers (False: removed, in maintenance until the next reload; a slot ober did not fill)."""
    drained: bool
    """In ``ober.yaml``'s drained list."""
    runs_as: str | None
    """HAProxy's name for it: its own (``host-port``), a slot (``_slotK``), None when HAProxy does not have it."""
    running: Running | None = None

    @property
    def entry(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def where(self) -> str:
        """Where it runs in HAProxy, in words."""
        if self.runs_as is None:
            return "not loaded"
        return f"slot {self.runs_as}" if is_slot(self.runs_as) else "own line"

    @property
    def state(self) -> str:
        """What it does now, in words: serving, drained, down, removed (until the next reload), not loaded."""
        if self.running is None:
            return "not loaded (reload to load it)" if self.listed else "gone"
        status = self.running.status
        if not self.listed:
            return "removed (gone at the next reload)" if status.startswith("MAINT") else f"not in ober.yaml ({status})"
        if status.startswith("MAINT"):
            return "in maintenance"
        if self.running.weight == 0:
            return "drained" + ("" if self.drained else " (weight 0, not in ober.yaml)")
        if self.running.up:
            return "serving" + (" (ober.yaml says drained)" if self.drained else "")
        return "down"

    @property
    def live(self) -> bool:
        """Takes new requests now."""
        return self.running is not None and self.listed and self.running.up

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        running = self.running
        return {
            "server": self.entry,
            "listed": self.listed,
            "drained": self.drained,
            "haproxy_name": self.runs_as,
            "where": self.where,
            "state": self.state,
            "status": running.status if running else None,
            "check": running.check_status.lstrip("* ") if running else None,
            "weight": running.weight if running else None,
            "sessions": running.sessions if running else None,
            "served": running.served if running else None,
            "address": running.address if running else None,
        }


@dataclass(frozen=True)
class GroupView:
    """A backend group: its servers, and its spare slots."""

    name: str
    members: tuple[Member, ...]
    slots: int
    free_slots: tuple[str, ...]

    def member(self, host: str, port: int) -> Member | None:
        """The listed server at ``host:port``, if any."""
        return next((m for m in self.members if m.listed and m.host == host and m.port == port), None)

    @property
    def live(self) -> int:
        """Servers taking new requests."""
        return sum(m.live for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "group": self.name,
            "live": self.live,
            "slots": self.slots,
            "free_slots": len(self.free_slots),
            "servers": [m.to_dict() for m in self.members],
        }


@dataclass(frozen=True)
class View:
    """Every backend group of the node, with what its running HAProxy does."""

    worker: int | None
    groups: tuple[GroupView, ...]
    record: SlotRecord

    def group(self, name: str) -> GroupView:
        """The group called ``name``.

        Raises:
            ConfigError: no such group.
        """
        for group in self.groups:
            if group.name == name:
                return group
        known = ", ".join(g.name for g in self.groups)
        raise ConfigError(f"no backend group named {name!r} on this node", f"use one of: {known}")


def make_view(config: NodeConfig, state: State, record: SlotRecord) -> View:
    """What each group's servers are doing, from the config, HAProxy's state and the slot record (pure)."""
    groups: list[GroupView] = []
    for group in config.backends:
        backend = backend_name(group.name)
        running = {s.name: s for s in state.servers if s.backend == backend}
        members: list[Member] = []
        for server in group.servers:
            # A slot first: a server removed (its own line in maintenance) and added again before a reload runs
            # in a slot.
            slot = record.slot_of(backend, server.name)
            runs_as = slot if slot in running else (server.name if server.name in running else None)
            members.append(
                Member(
                    group.name,
                    server.host,
                    server.port,
                    listed=True,
                    drained=group.is_drained(server),
                    runs_as=runs_as,
                    running=running.get(runs_as) if runs_as else None,
                )
            )
        listed = {s.name for s in group.servers}
        free: list[str] = []
        for name, srv in running.items():
            if is_slot(name):
                holder = record.holder(backend, name)
                if holder in listed:
                    continue  # shown above, as the server it holds
                if srv.status.startswith("MAINT"):
                    free.append(name)
                    continue
            elif name in listed:
                continue
            # Removed (in maintenance until the next reload), or a slot filled by someone else.
            members.append(
                Member(
                    group.name,
                    srv.address or "?",
                    srv.port or 0,
                    listed=False,
                    drained=False,
                    runs_as=name,
                    running=srv,
                )
            )
        groups.append(GroupView(group.name, tuple(members), group.slots, tuple(sorted(free, key=_slot_number))))
    return View(state.pid, tuple(groups), record)


def _slot_number(name: str) -> int:
    return int(name.removeprefix("_slot")) if is_slot(name) else 0


@dataclass(frozen=True)
class Step:
    """One runtime API command and the command that reverses it."""

    command: str
    undo: str | None = None


@dataclass(frozen=True)
class Expect:
    """What HAProxy's server ``name`` of ``backend`` must show once the change is made."""

    backend: str
    name: str
    state: str
    """``serving`` (enabled, weight > 0), ``drained`` (weight 0) or ``maint``."""
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Plan:
    """One change to a backend group: the new ``ober.yaml``, the runtime commands, what to verify."""

    verb: str
    """``add``, ``undrain``, ``drain``, ``remove``, or ``none`` (nothing to do)."""
    group: str
    server: str
    """``host:port``."""
    message: str
    data: dict[str, Any] | None = None
    """The new ``ober.yaml`` mapping; None: it does not change."""
    steps: tuple[Step, ...] = ()
    idle: tuple[str, str] | None = None
    """(backend, name) whose requests must end (bounded) between ``steps`` and ``then``."""
    then: tuple[Step, ...] = ()
    expect: Expect | None = None
    record: SlotRecord | None = None
    """The slot record after the change (None: unchanged)."""

    @property
    def changes(self) -> bool:
        """Whether anything is to be done."""
        return self.verb != "none"

    def commands(self) -> list[str]:
        """Every runtime API command, in order (a wait for idle shown where it happens)."""
        wait = [f"(wait until {self.idle[0]}/{self.idle[1]} has no requests)"] if self.idle else []
        return [s.command for s in self.steps] + wait + [s.command for s in self.then]


def _entry(group: BackendGroup, text: str) -> Server:
    return parse_server(text.strip(), group.port, f"server {text!r}")


def _edited(
    data: Mapping[str, Any], group: BackendGroup, servers: Sequence[Server], drained: Sequence[Server]
) -> dict[str, Any]:
    """``data`` with the group's servers and drained lists replaced (as ``host:port`` lists)."""
    if not servers:
        raise ConfigError(
            f"backend group {group.name} would have no server left",
            "add the new server first (ober backends add), then remove this one",
        )
    new = dict(data)
    backends = dict(new.get("backends") or {})
    section = dict(backends.get(group.name) or {})
    section["servers"] = [f"{s.host}:{s.port}" for s in sorted(servers, key=server_order)]
    if drained:
        section["drained"] = [f"{s.host}:{s.port}" for s in drained]
    else:
        section.pop("drained", None)
    backends[group.name] = section
    new["backends"] = backends
    return new


def resolve_ipv4(host: str) -> str:
    """``host``'s first IPv4 address (HAProxy's ``set server addr`` takes addresses only).

    Raises:
        OberError: it does not resolve here.
    """
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    if not infos:
        raise OberError(
            f"{host} does not resolve to an IPv4 address on this node",
            f"add {host} to DNS or /etc/hosts here, or give its address",
        )
    return str(infos[0][4][0])


def plan_add(
    data: Mapping[str, Any], config: NodeConfig, view: View, group_name: str, text: str, resolve: Resolve
) -> Plan:
    """Add a server to a group (into a free slot), or undrain it if it is there and drained.

    Raises:
        ConfigError: bad server or group; OberError: no free slot, or the name does not resolve.
    """
    gv = view.group(group_name)
    group = config.backend(group_name)
    server = _entry(group, text)
    backend = backend_name(group.name)
    entry = f"{server.host}:{server.port}"
    member = gv.member(server.host, server.port)
    if member is None:
        # Removed since the last reload, so still on its own line (in maintenance): back there, not in a slot.
        member = next((m for m in gv.members if not m.listed and m.runs_as == server.name), None)
        if member is not None:
            data = _edited(data, group, [*group.servers, server], group.drained)
            return _enable(data, group, member, server, "add", f"add {entry} to {group.name} again (its own line)")
    elif member.runs_as is not None and member.running is not None:
        enabled = member.running.weight != 0 and not member.running.status.startswith("MAINT")
        if enabled and not member.drained:
            return Plan("none", group.name, entry, f"{entry} is already a server of {group.name} ({member.state})")
        data = _edited(data, group, group.servers, [s for s in group.drained if s != server])
        return _enable(data, group, member, server, "undrain", f"undrain {entry} in {group.name}: it takes requests")
    if not gv.free_slots:
        used = gv.slots - len(gv.free_slots)
        raise OberError(
            f"backend group {group.name} has no free server slot ({used} of {gv.slots} hold servers added since "
            f"HAProxy's last reload)",
            "reload HAProxy to give those servers their own lines and free the slots ('ober reload', hitless), "
            f"or raise the slots: ober config --set backends.{group.name}.slots={max(2 * gv.slots, 4)}",
        )
    slot = gv.free_slots[0]
    address = resolve(server.host)
    record = SlotRecord(view.worker, {b: dict(s) for b, s in view.record.slots.items()})
    record.put(backend, slot, server.name)
    # In ober.yaml already but not in the running HAProxy (written without a reload): only the slot is needed.
    new_data = None if member is not None else _edited(data, group, [*group.servers, server], group.drained)
    target = f"{backend}/{slot}"
    return Plan(
        "add",
        group.name,
        entry,
        f"add {entry} ({address}) to {group.name} in slot {slot}",
        data=new_data,
        steps=(
            Step(f"set server {target} addr {address} port {server.port}", f"set server {target} addr 0.0.0.0"),
            # A slot freed by a remove was drained first: it must not stay at weight 0.
            Step(f"set weight {target} 1"),
            Step(f"set server {target} state ready", f"set server {target} state maint"),
        ),
        expect=Expect(backend, slot, "serving", address, server.port),
        record=record,
    )


def _enable(data: dict[str, Any], group: BackendGroup, member: Member, server: Server, verb: str, message: str) -> Plan:
    """Weight 1 and out of maintenance, as far as each is needed, for a server HAProxy already has."""
    assert member.runs_as is not None and member.running is not None
    target = f"{backend_name(group.name)}/{member.runs_as}"
    steps: list[Step] = []
    if member.running.weight == 0:
        steps.append(Step(f"set weight {target} 1", f"set weight {target} 0"))
    if member.running.status.startswith("MAINT"):
        steps.append(Step(f"set server {target} state ready", f"set server {target} state maint"))
    return Plan(
        verb,
        group.name,
        f"{server.host}:{server.port}",
        message,
        data=data,
        steps=tuple(steps),
        expect=Expect(backend_name(group.name), member.runs_as, "serving"),
    )


def _listed(gv: GroupView, group: BackendGroup, server: Server, verb: str) -> Member:
    member = gv.member(server.host, server.port)
    if member is None:
        known = ", ".join(f"{s.host}:{s.port}" for s in group.servers)
        raise ConfigError(
            f"cannot {verb} {server.host}:{server.port}: not a server of group {group.name}",
            f"its servers: {known}",
        )
    return member


def _guard(config: NodeConfig, gv: GroupView, member: Member, verb: str, force: bool) -> None:
    """Refuse to take the last server taking requests out of a group that serves a VIP (unless ``force``)."""
    vips = [vip.name for vip in config.vips if vip.backend == gv.name]
    if force or not vips or not member.live or gv.live > 1:
        return
    raise OberError(
        f"{verb} {member.entry} would leave group {gv.name} no server taking requests: this node would withdraw "
        f"{', '.join(vips)}",
        "add another server first (ober backends add), or --force",
    )


def plan_drain(
    data: Mapping[str, Any], config: NodeConfig, view: View, group_name: str, text: str, *, force: bool
) -> Plan:
    """Drain a server: weight 0, no new requests; what it serves finishes.

    Raises:
        ConfigError: not a server of the group; OberError: it is the group's last live server (without ``force``).
    """
    gv = view.group(group_name)
    group = config.backend(group_name)
    server = _entry(group, text)
    member = _listed(gv, group, server, "drain")
    if member.drained and (member.running is None or member.running.weight == 0):
        return Plan("none", group.name, member.entry, f"{member.entry} is already drained")
    _guard(config, gv, member, "draining", force)
    new_data = _edited(data, group, group.servers, [*group.drained, server] if not member.drained else group.drained)
    backend = backend_name(group.name)
    if member.runs_as is None:
        return Plan("drain", group.name, member.entry, f"drain {member.entry} (not loaded)", data=new_data)
    return Plan(
        "drain",
        group.name,
        member.entry,
        f"drain {member.entry} in {group.name}: no new requests, what it serves finishes",
        data=new_data,
        steps=(Step(f"set weight {backend}/{member.runs_as} 0", f"set weight {backend}/{member.runs_as} 1"),),
        expect=Expect(backend, member.runs_as, "drained"),
    )


def plan_remove(
    data: Mapping[str, Any], config: NodeConfig, view: View, group_name: str, text: str, *, force: bool
) -> Plan:
    """Remove a server: drained, then (once idle, bounded) in maintenance; gone from ober.yaml and the next reload.

    Raises:
        ConfigError: not a server of the group, or its last one; OberError: it is the group's last live server.
    """
    gv = view.group(group_name)
    group = config.backend(group_name)
    server = _entry(group, text)
    member = gv.member(server.host, server.port)
    if member is None:
        gone = any(not m.listed and m.runs_as == server.name for m in gv.members)
        if gone:
            return Plan("none", group.name, f"{server.host}:{server.port}", "already removed (until the next reload)")
        _listed(gv, group, server, "remove")
        raise AssertionError("unreachable")  # pragma: no cover
    _guard(config, gv, member, "removing", force)
    new_data = _edited(
        data, group, [s for s in group.servers if s != server], [s for s in group.drained if s != server]
    )
    backend = backend_name(group.name)
    name = member.runs_as
    if name is None:
        return Plan("remove", group.name, member.entry, f"remove {member.entry} (not loaded)", data=new_data)
    record = None
    if is_slot(name):
        record = SlotRecord(view.worker, {b: dict(s) for b, s in view.record.slots.items()})
        record.free(backend, name)
    target = f"{backend}/{name}"
    weight = (
        ()
        if member.running is not None and member.running.weight == 0
        else (Step(f"set weight {target} 0", f"set weight {target} 1"),)
    )
    return Plan(
        "remove",
        group.name,
        member.entry,
        f"remove {member.entry} from {group.name}: drained, then in maintenance until the next reload drops it",
        data=new_data,
        steps=weight,
        idle=(backend, name),
        then=(Step(f"set server {target} state maint", f"set server {target} state ready"),),
        expect=Expect(backend, name, "maint"),
        record=record,
    )


# --- doing it ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a change did (or, on a dry run, would do)."""

    plan: Plan
    files: tuple[Change, ...] = ()
    backup: Path | None = None
    dry_run: bool = False
    left: int | None = None
    """A removed server's requests still running when it went into maintenance (HAProxy lets them finish)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "group": self.plan.group,
            "server": self.plan.server,
            "action": self.plan.verb,
            "changed": self.plan.changes and not self.dry_run,
            "dry_run": self.dry_run,
            "message": self.plan.message,
            "commands": self.plan.commands(),
            "files": [{"path": c.path, "change": c.kind} for c in self.files],
            "backup": str(self.backup) if self.backup else None,
            "requests_left": self.left,
        }

    def diff(self) -> str:
        """The unified diff of the files."""
        return diff(list(self.files))


def _placeholders(config: NodeConfig) -> dict[str, str]:
    # Only haproxy.cfg and ober.yaml are written, and neither holds a secret: the others render with stand-ins.
    return {name: "placeholder" for name in config.secret_names()}


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OberError(f"cannot read {path}: {exc}", "run as root") from None


def file_changes(old: NodeConfig, new: NodeConfig, root: Path = Path("/")) -> tuple[list[Change], list[str]]:
    """The changes to ``haproxy.cfg`` and ``ober.yaml`` (checked by ``haproxy -c``), and every path ober owns.

    Raises:
        OberError: this node's ``haproxy.cfg`` is not what its ``ober.yaml`` renders now (a change not applied
            yet): writing the new one would slip that change in unseen.
        RenderError: ``haproxy -c`` refused the new config.
    """
    p = paths(new)
    wanted = (p["haproxy_cfg"], p["config"])
    # The users this machine has (a node's own; stand-ins in a lab without them), as its haproxy.cfg was written.
    run_as = local_run_as(root)
    before = build_node(old, _placeholders(old), check=False, run_as=run_as).rendered.file(p["haproxy_cfg"]).content
    on_disk = _read_text(root / p["haproxy_cfg"].lstrip("/"))
    if on_disk != before:
        raise OberError(
            f"{p['haproxy_cfg']} is not what this node's ober.yaml renders (a change not applied yet?)",
            f"apply it first (ober config --from {p['config']}), then retry",
        )
    built = build_node(new, _placeholders(new), check=False, run_as=run_as)
    check_haproxy(resolve_whitelists(new), _placeholders(new))
    rendered = Rendered(new.name, tuple(f for f in built.rendered.files if f.path in wanted))
    # plan() also lists files of the last apply's manifest that `rendered` lacks, as removals: here it holds two
    # files only, and every other file stays as it is.
    changes = [c for c in plan(rendered, root, new.install_path) if c.path in wanted]
    return changes, [f.path for f in built.rendered.files]


def _accepted(answer: str) -> bool:
    # Success is an empty answer, or set server addr's "IP changed from … to …" (or "nothing changed": the same).
    text = answer.strip()
    return not text or "changed from" in text or "no need to change" in text or text == "nothing changed"


def _run(ask: Query, steps: Sequence[Step], done: list[Step]) -> None:
    for step in steps:
        answer = ask(step.command)
        if not _accepted(answer):
            raise OberError(
                f"HAProxy refused '{step.command}': {answer.strip().splitlines()[0][:200]}",
                "see 'ober backends list'; the change was undone",
            )
        done.append(step)


def _find(state: State, backend: str, name: str) -> Running | None:
    return next((s for s in state.servers if s.backend == backend and s.name == name), None)


def _verify(state: State, expect: Expect) -> None:
    server = _find(state, expect.backend, expect.name)
    if server is None:
        raise OberError(f"HAProxy has no server {expect.backend}/{expect.name} after the change")
    maint = server.status.startswith("MAINT")
    ok = {
        "serving": not maint and server.weight != 0,
        "drained": server.weight == 0,
        "maint": maint,
    }[expect.state]
    if expect.address is not None and (server.address, server.port) != (expect.address, expect.port):
        ok = False
    if not ok:
        raise OberError(
            f"HAProxy shows {expect.backend}/{expect.name} as {server.status} (weight {server.weight}, "
            f"{server.address}:{server.port}) after the change, not {expect.state}",
            "see 'ober backends list'",
        )


def _wait_idle(
    read: Callable[[], State],
    target: tuple[str, str],
    wait: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int:
    deadline = clock() + wait
    while True:
        server = _find(read(), *target)
        left = server.sessions if server else 0
        if left == 0 or clock() >= deadline:
            return left
        sleep(IDLE_POLL)


def execute(
    config: NodeConfig,
    change: Plan,
    *,
    ask: Query,
    read: Callable[[], State],
    wait: float = 30.0,
    dry_run: bool = False,
    root: Path = Path("/"),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Make one planned change: files written (checked, atomic, backed up), then the runtime API, then verified.

    On any failure the files are put back and the runtime commands already made are reversed.

    Raises:
        OberError: nothing changed (or everything was put back); the message says why.
    """
    if not change.changes:
        return Outcome(change, dry_run=dry_run)
    files: list[Change] = []
    owned: list[str] = []
    if change.data is not None:
        files, owned = file_changes(config, parse_node_config(change.data, "new config"), root)
    if dry_run:
        return Outcome(change, tuple(files), dry_run=True)

    done: list[Step] = []
    left: list[int | None] = [None]

    def make() -> None:
        _run(ask, change.steps, done)
        if change.idle:
            left[0] = _wait_idle(read, change.idle, wait, clock, sleep)
        _run(ask, change.then, done)

    def verify() -> None:
        if change.expect is not None:
            _verify(read(), change.expect)

    def undo() -> None:
        failed = [step.undo for step in reversed(done) if step.undo and not _accepted(ask(step.undo))]
        done.clear()
        if failed:
            raise OberError(f"HAProxy refused to undo with '{failed[0]}'", "reload HAProxy: ober reload")

    backup = None
    if files:
        try:
            backup = apply(files, root, config.install_path, owned, reload=make, verify=verify, undo=undo).backup
        except OberError as exc:
            # apply()'s own advice is about a config; here the config was fine and HAProxy said no.
            undone = exc.message.endswith("rolled back to the previous files")
            raise OberError(
                exc.message, "see 'ober backends list'; nothing was changed" if undone else exc.fix
            ) from None
    else:
        try:
            make()
            verify()
        except OberError:
            undo()
            raise
    if change.record is not None:
        write_record(config, change.record)
    return Outcome(change, tuple(files), backup, left=left[0])


def runtime(config: NodeConfig) -> tuple[Query, Callable[[], State]]:
    """The node's runtime API: a command sender and a state reader."""
    socket_path = paths(config)["admin_socket"]
    timeout = config.health.timeout

    def ask(command: str) -> str:
        return query(socket_path, command, timeout)

    def read() -> State:
        return read_state(socket_path, timeout)

    return ask, read


def current_view(config: NodeConfig, read: Callable[[], State]) -> View:
    """The node's backend groups now.

    Raises:
        OberError: HAProxy does not answer (it must run for a change without a reload).
    """
    state = read()
    return make_view(config, state, read_record(config, state.pid))


@dataclass
class Request:
    """One ``ober backends add|drain|remove`` on this node."""

    verb: str
    group: str
    server: str
    force: bool = False
    wait: float = 30.0
    dry_run: bool = False
    resolve: Resolve = field(default=resolve_ipv4)


def change(config_path: Path, request: Request) -> Outcome:
    """Read the node's config and HAProxy, plan the one change, make it. Holds the node's backends lock.

    Raises:
        ConfigError, OberError: nothing changed; the message says why.
    """
    data = read_yaml(config_path)
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level", "run ober config first")
    config = parse_node_config(data, str(config_path))
    ask, read = runtime(config)
    with _Locked(config):
        view = current_view(config, read)
        if request.verb == "add":
            planned = plan_add(data, config, view, request.group, request.server, request.resolve)
        elif request.verb == "drain":
            planned = plan_drain(data, config, view, request.group, request.server, force=request.force)
        elif request.verb == "remove":
            planned = plan_remove(data, config, view, request.group, request.server, force=request.force)
        else:
            raise ConfigError(f"unknown backends action {request.verb!r}", "use add, drain or remove")
        return execute(config, planned, ask=ask, read=read, wait=request.wait, dry_run=request.dry_run)


class _Locked:
    """The node's backends lock (flock on a file in the run directory): one change at a time."""

    def __init__(self, config: NodeConfig) -> None:
        self.path = Path(paths(config)["run_dir"]) / "backends.lock"
        self.handle: Any = None

    def __enter__(self) -> None:

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise OberError(
                "another ober backends change is running on this node", "wait for it to finish, then retry"
            ) from None

    def __exit__(self, *_exc: object) -> None:
        self.handle.close()
