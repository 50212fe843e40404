"""A persistent lab fleet (``ober lab up|down|status``): nspawn nodes, a BIRD router, two real RGW groups.

Unlike a test's `Lab`, which lives as long as the process that made it, this lab outlives ``ober lab up``: every
daemon runs in its own session, and everything made is recorded in ``DIR/state.json`` as it is made (namespaces,
PIDs with their start times, mounts), so ``ober lab down`` (another process, maybe after a crash of ``up``) stops
exactly that, by PID. The namespace prefix is recorded first, so ``down`` also finds whatever an interrupted
``up`` made before it could write it down. A node survives ``systemctl reboot`` (its supervisor starts nspawn
again): its nspawn and init PIDs change then, so they are looked up when needed (`LabFleet.init_pid`), never
read from the state.

``up`` also writes what the fleet tools need: ``inventory.yaml``, the secrets file ``login``, ``ssh_config``
(``ssh -F DIR/ssh_config node01``), ``known_hosts`` (host keys pinned at creation) and the site certificate.
The nodes are not bootstrapped: that is ``ober fleet bootstrap``'s job. Node addresses exist only inside the lab;
the ssh_config reaches them through `ober.lab.relay`, run in the router's namespace.

`ober.lab.labstate` keeps the state and stops processes by PID; `ober.lab.labfiles` writes the client files.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ober.errors import OberError
from ober.hostlists import collect
from ober.lab import labfiles, labstate
from ober.lab.image import DEFAULT_IMAGE, ensure_image, image_ready
from ober.lab.labfiles import LabPaths, write_client_files
from ober.lab.labstate import NodeProcs, Proc, State
from ober.lab.netns import Lab, delete_netns, list_netns
from ober.lab.nspawn import boot_node, node_cgroups, remove_cgroups, sshd_answers
from ober.lab.rgw import UNIX_PATH_MAX, http_get, missing_programs
from ober.lab.router import RouterView, start_router
from ober.lab.site import CLIENT_SEGMENT, VIPS, node_address, site_certificate, start_backends

DEFAULT_DIR = Path("/var/lib/ober/lab")
DEFAULT_NODES = 4
MAX_NODES = 16
VIP_PREFIX = "198.51.100.0/24"
SSH_TIMEOUT = 30.0
CERT_DAYS = 365
INOTIFY_PER_NODE = 10
# Re-exported: the fleet tests and tools know them from here.
ROUTER_AS, NODE_AS, NODE_PEM = labfiles.ROUTER_AS, labfiles.NODE_AS, labfiles.NODE_PEM

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LabNode:
    """A lab node as the fleet tools see it."""

    name: str
    address: str
    ns: str


class LabFleet(LabPaths):
    """A lab that is up, read from its state file (`up` returns one; `load` reads one)."""

    def __init__(self, directory: Path, state: State) -> None:
        super().__init__(directory)
        self.state = state
        self.already_up = False
        """Set by `up` when it found this lab already up and started nothing."""

    @property
    def nodes(self) -> dict[str, LabNode]:
        """The nodes by name, in order."""
        return {n["name"]: LabNode(n["name"], n["address"], n["ns"]) for n in self.state.data["nodes"]}

    @property
    def router(self) -> RouterView:
        """The router: ``next_hops(vip)``, ``bgp_sessions()``, ``birdc(...)``."""
        router = self.state.data["router"]
        address = ipaddress.IPv4Interface(router["address"])
        return RouterView(router["ns"], address, Path(router["rundir"]), dict(router["peers"]))

    @property
    def client_ns(self) -> str:
        """The client segment's namespace (100.64.10.2): run S3 clients there (`ober.lab.rgw.in_netns`)."""
        return str(self.state.data["client_ns"])

    @property
    def vips(self) -> dict[str, str]:
        """Backend group → its VIP."""
        return dict(self.state.data["vips"])

    def init_pid(self, node: str) -> int:
        """The PID (on this host) of a node's init now, e.g. for ``nsenter -t PID -a``; another after each reboot.

        Raises:
            OberError: no such node, or it is not running now (down, or between the two halves of a reboot).
        """
        records = {n["name"]: n for n in self.state.data["nodes"]}
        if node not in records:
            raise OberError(f"no lab node {node}", f"choose from {collect(self.nodes)}")
        init = NodeProcs.load(records[node]).init()
        if init is None:
            raise OberError(f"lab node {node} is not running", f"ober lab status --dir {self.dir}")
        return init.pid

    def s3_credentials(self, group: str) -> tuple[str, str]:
        """The S3 access and secret key of the lab user on a backend group's RGW cluster."""
        keys = json.loads((self.dir / "s3-credentials.json").read_text())
        return str(keys[group]["access_key"]), str(keys[group]["secret_key"])

    def rgw_endpoints(self, group: str) -> list[str]:
        """The radosgw URLs of a backend group (reachable from the lab's namespaces)."""
        return list(self.state.data["clusters"][group]["endpoints"])

    def run_on(
        self, node: str, command: str | Sequence[str], *, timeout: float = SSH_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on a node as root, with plain OpenSSH and the lab's ssh_config (host key verified).

        Raises:
            OberError: the node is unknown, the command timed out, or (with ``check``) it failed.
        """
        if node not in self.nodes:
            raise OberError(f"no lab node {node}", f"choose from {collect(self.nodes)}")
        line = command if isinstance(command, str) else shlex.join(command)
        argv = ["ssh", "-F", str(self.ssh_config), node, "--", line]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OberError(f"{node}: {line} did not finish in {timeout:g}s") from None
        if check and done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise OberError(f"{node}: {line} failed (exit {done.returncode}): {last}")
        return done


def require_root(euid: int | None = None) -> None:
    """Refuse to go on without root: the lab makes namespaces, mounts and containers.

    Raises:
        OberError: not root.
    """
    if (os.geteuid() if euid is None else euid) != 0:
        raise OberError("ober lab needs root (network namespaces, mounts, containers)", "run it with sudo")


def load(directory: Path = DEFAULT_DIR) -> LabFleet:
    """The lab recorded in ``directory``.

    Raises:
        OberError: not root, no lab there, or only a half-made one.
    """
    require_root()
    directory = directory.absolute()
    state = labstate.read(directory)
    if state is None:
        raise OberError(f"no lab in {directory}", f"start one: ober lab up --dir {directory}")
    if not state.data.get("complete"):
        raise OberError(f"the lab in {directory} is half made", f"ober lab down --dir {directory}")
    return LabFleet(directory, state)


def up(
    nodes: int | None = None,
    directory: Path = DEFAULT_DIR,
    *,
    image: Path = DEFAULT_IMAGE,
    progress: Progress | None = None,
) -> LabFleet:
    """Bring a lab of ``nodes`` nodes (default 4) up in ``directory``; write its inventory, secrets and ssh_config.

    A lab already up there (with as many nodes, if ``nodes`` is given) is returned as it is (``already_up``). If
    anything fails, or the bring-up is interrupted, everything started so far is torn down before the error is
    raised.

    Raises:
        OberError: not root, a tool or the image missing, a different lab already there, or a step failing.
    """
    say = progress or (lambda _text: None)
    require_root()
    if nodes is not None and not 1 <= nodes <= MAX_NODES:
        raise OberError(f"a lab has 1 to {MAX_NODES} nodes, not {nodes}", "ober lab up 4")
    _check_tools()
    directory = directory.absolute()
    _check_dir(directory)
    created = not directory.exists()
    with labstate.locked(directory):
        existing = labstate.read(directory)
        if existing is not None:
            return _existing(directory, existing, nodes)
        nodes = nodes or DEFAULT_NODES
        if not image_ready(image):
            say("building the node image (once; about a minute)")
            ensure_image(image)
        leftovers = sorted(p.name for p in directory.iterdir() if p.name != labstate.LOCK)
        if leftovers:
            raise OberError(f"{directory} is not empty ({', '.join(leftovers[:3])})", "give an empty or new --dir")
        used, limit = labstate.inotify_instances()
        if used + INOTIFY_PER_NODE * nodes > limit:
            say(
                f"warning: {used} of {limit} inotify instances are in use on this machine and each node needs about "
                f"{INOTIFY_PER_NODE}: systemd units inside the nodes may fail (fs.inotify.max_user_instances)"
            )
        state = State(directory, _initial(directory, nodes, created))
        state.save()
        lab = Lab(state.data["prefix"], keep_files=True, workdir=directory)
        try:
            return _bring_up(lab, state, nodes, image, say)
        except BaseException as exc:
            say("bring-up failed: tearing down what was started")
            # The lab's own teardown first (it holds what a step started before the state could list it), then
            # the state's: the prefix's namespaces, the mounts below the directory, the files.
            for teardown in (lab.close, partial(_teardown, directory, state)):
                try:
                    teardown()
                except OberError as leftover:
                    exc.add_note(str(leftover))
            raise


def down(directory: Path = DEFAULT_DIR, *, progress: Progress | None = None) -> bool:
    """Stop and remove everything the lab in ``directory`` made; False when there was no lab (nothing to do).

    Raises:
        OberError: not root, or something could not be removed (everything else was still removed).
    """
    require_root()
    directory = directory.absolute()
    if not (directory / labstate.STATE).exists():
        return False
    with labstate.locked(directory):
        state = labstate.read(directory)
        if state is None:
            return False
        _teardown(directory, state, progress or (lambda _text: None))
        return True


def status(directory: Path = DEFAULT_DIR) -> dict[str, Any]:
    """What runs in the lab, asked from the lab itself: nodes, router sessions and next-hops, RGW groups.

    Raises:
        OberError: not root, or no lab in ``directory``.
    """
    require_root()
    directory = directory.absolute()
    state = labstate.read(directory)
    if state is None:
        raise OberError(f"no lab in {directory}", f"start one: ober lab up --dir {directory}")
    data = state.data
    report: dict[str, Any] = {"dir": str(directory), "complete": bool(data.get("complete")), "nodes": []}
    fleet = LabFleet(directory, state)
    for node in data["nodes"]:
        running = NodeProcs.load(node).init() is not None
        answers = running and sshd_answers(data["router"]["ns"], node["address"])
        system = ""
        if answers and fleet.ssh_config.exists():
            with contextlib.suppress(OberError):
                system = fleet.run_on(node["name"], "systemctl is-system-running", timeout=10, check=False).stdout
        shown = {key: node[key] for key in ("name", "address", "ns")}
        report["nodes"].append({**shown, "running": running, "sshd": answers, "system": system.strip()})
    bird = _proc(data["router"].get("bird")).alive()
    router: dict[str, Any] = {"ns": data["router"].get("ns"), "bird": bird, "sessions": {}, "next_hops": {}}
    if bird:
        with contextlib.suppress(OberError):
            router["sessions"] = fleet.router.bgp_sessions()
        router["next_hops"] = {vip: fleet.router.next_hops(vip) for vip in data["vips"].values()}
    report["router"] = router
    report["backends"] = {}
    for group, cluster in data.get("clusters", {}).items():
        daemons = {d["what"]: _proc(d).alive() for d in cluster["daemons"]}
        endpoints = {url: _answers(cluster["ns"], url) for url in cluster["endpoints"]}
        report["backends"][group] = {"vip": data["vips"][group], "daemons": daemons, "endpoints": endpoints}
    report["client_ns"] = data.get("client_ns")
    used, limit = labstate.inotify_instances()
    report["inotify"] = {"used": used, "limit": limit}
    report["healthy"] = (
        report["complete"]
        and all(node["running"] and node["sshd"] for node in report["nodes"])
        and bird
        and all(all(b["daemons"].values()) and all(b["endpoints"].values()) for b in report["backends"].values())
    )
    return report


# --- bring-up -------------------------------------------------------------------------------------------------------


def _initial(directory: Path, nodes: int, created: bool) -> dict[str, Any]:
    return {
        "version": 1,
        "prefix": f"ober-lab-{secrets.token_hex(2)}-",
        "owner": os.getpid(),
        "complete": False,
        "created_dir": created,
        "size": nodes,
        "namespaces": [],
        "mounts": [],
        "router": {},
        "nodes": [],
        "clusters": {},
        "client_ns": None,
        "vips": dict(VIPS),
    }


def _existing(directory: Path, state: State, nodes: int | None) -> LabFleet:
    data = state.data
    if not data.get("complete"):
        owner = int(data.get("owner", 0))
        raise OberError(
            f"a half-made lab is recorded in {directory} (by ober lab up, PID {owner})",
            f"ober lab down --dir {directory}",
        )
    running = [NodeProcs.load(node).init() is not None for node in data["nodes"]]
    if not _proc(data["router"]["bird"]).alive() or not all(running):
        # After a reboot, or someone killed a part of it: it cannot be used as it is.
        raise OberError(f"the lab recorded in {directory} is no longer running", f"ober lab down --dir {directory}")
    if nodes is not None and data["size"] != nodes:
        raise OberError(
            f"a lab of {data['size']} node(s) is already up in {directory}", f"ober lab down --dir {directory} first"
        )
    fleet = LabFleet(directory, state)
    fleet.already_up = True
    return fleet


def _check_tools() -> None:
    for program, package in (
        ("ip", "iproute2"),
        ("systemd-nspawn", "systemd-container"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("bird", "bird2"),
        ("openssl", "openssl"),
    ):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            raise OberError(f"{program} is not installed", f"apt-get install {package}")
    missing = missing_programs()
    if missing:
        raise OberError(f"Ceph programs missing: {', '.join(missing)}", "apt-get install radosgw ceph-mon ceph-osd")


def _check_dir(directory: Path) -> None:
    """Refuse, before anything starts, a directory overlayfs or Ceph's admin sockets cannot use."""
    if set(str(directory)) & {",", ":"}:
        raise OberError(f"the lab directory {directory} holds ',' or ':', which overlayfs refuses", "use another --dir")
    longest = directory / "ceph-a" / "run" / "ceph-client.rgw.99.asok"
    if len(str(longest)) > UNIX_PATH_MAX:
        raise OberError(f"the lab directory {directory} is too long for Ceph's admin sockets", "use a shorter --dir")


def _bring_up(lab: Lab, state: State, size: int, image: Path, say: Progress) -> LabFleet:
    data, directory = state.data, lab.workdir
    started = time.monotonic()
    addresses = {f"node{i:02d}": node_address(i) for i in range(1, size + 1)}

    def record() -> None:
        data["namespaces"] = list(lab.namespaces)
        state.save()

    say("starting the router (BIRD, ECMP)")
    router = start_router(lab, list(addresses.values()), [VIP_PREFIX], asn=ROUTER_AS, peer_as=NODE_AS)
    data["router"] = {
        "ns": router.ns,
        "address": str(router.address),
        "rundir": str(router.rundir),
        "peers": router.peers,
        "bird": Proc.of(router.process.pid, "bird").record(),
    }
    record()
    say("making the site certificate")
    site_certificate(directory / "certs", CERT_DAYS)
    say("starting two Ceph RGW groups (about 15 s each)")
    clusters = start_backends(lab, router)
    credentials = {}
    for group, cluster in clusters.items():
        # radosgw first and the mon last, the order a cluster stops in.
        names = sorted(cluster.pids, key=lambda name: ("client." not in name, "osd." not in name))
        daemons = [Proc.of(cluster.pids[name], name).record() for name in names]
        data["clusters"][group] = {"ns": cluster.netns, "endpoints": list(cluster.endpoints), "daemons": daemons}
        credentials[group] = {"access_key": cluster.access_key, "secret_key": cluster.secret_key}
    labstate.write_private(directory / "s3-credentials.json", json.dumps(credentials, indent=2) + "\n")
    record()
    data["client_ns"] = router.segment(lab, "client", CLIENT_SEGMENT)
    record()
    for name, address in addresses.items():
        say(f"booting {name} ({address})")
        node = boot_node(lab, router, name, address, image=image)
        data["nodes"].append(
            {
                "name": name,
                "address": address,
                "ns": node.ns,
                "root": str(node.root),
                # Not nspawn nor the init: they change at each reboot of the node (`NodeProcs` finds them).
                "supervisor": Proc.of(node.process.pid, f"supervisor {name}").record(),
            }
        )
        data["mounts"].append(str(node.root))
        record()
    fleet = LabFleet(directory, state)
    say("writing inventory.yaml, login, ssh_config, known_hosts")
    write_client_files(fleet, router.ns, str(router.address.ip), addresses)
    for name in addresses:
        say(f"checking ssh -F ssh_config {name}")
        fleet.run_on(name, "true")
    data["complete"] = True
    data["seconds"] = round(time.monotonic() - started, 1)
    state.save()
    return fleet


# --- teardown -------------------------------------------------------------------------------------------------------


def _proc(record: dict[str, Any] | None) -> Proc:
    return Proc.load(record)


def _answers(ns: str, url: str) -> bool:
    try:
        return http_get(ns, url)[0] == 200
    except (OSError, OberError):
        return False


def _teardown(directory: Path, state: State, say: Progress | None = None) -> None:
    """Stop what the state lists, by PID, in order; sweep the prefix's namespaces and the dir's mounts; remove."""
    say = say or (lambda _text: None)
    data = state.data
    problems: list[str] = []
    nodes = data.get("nodes", [])
    if nodes:
        say(f"powering off {len(nodes)} nodes")
        problems += labstate.stop_nodes([NodeProcs.load(n) for n in nodes])
    clusters = data.get("clusters", {}).values()
    if clusters:
        say("stopping the Ceph RGW groups")
    for kind in ("client.", "osd.", "mon."):
        problems += labstate.stop_all([_proc(d) for c in clusters for d in c["daemons"] if d["what"].startswith(kind)])
    problems += labstate.stop_all([_proc(data.get("router", {}).get("bird"))])
    say("deleting the namespaces")
    prefix = data.get("prefix", "")
    names = [*reversed(data.get("namespaces", [])), *(n for n in list_netns() if prefix and n.startswith(prefix))]
    for name in dict.fromkeys(names):
        try:
            delete_netns(name)
        except OberError as exc:
            problems.append(str(exc))
    for node in nodes:
        if node.get("ns"):
            remove_cgroups(node_cgroups(node["ns"]))
    # Last: a container the steps above could not stop cleanly went with its namespace's processes.
    say("unmounting node roots")
    problems += labstate.unmount_under(directory, [Path(m) for m in data.get("mounts", [])])
    if problems:
        state.save()
        raise OberError(
            f"lab teardown incomplete: {'; '.join(problems)}", f"fix that, then ober lab down --dir {directory}"
        )
    say(f"removing {directory}")
    labstate.remove(directory, created=bool(data.get("created_dir")))
