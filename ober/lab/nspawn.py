"""Full lab nodes: the Debian 13 image booted by systemd-nspawn, systemd as PID 1, reached over SSH as root.

Each node is a container in its own network namespace, linked to the lab router like a real node on its uplink.
Its root is an overlayfs over the read-only image (writes land in the node's upper directory under the lab's work
directory, a few MiB), given its own sshd host keys, machine id and hostname before boot. The lab's SSH key pair
logs in as root; the nodes' host keys are pinned in the lab's known_hosts, so every connection is verified.

SSH runs from the router's namespace (the node addresses exist only inside the lab), with a connect timeout and
keep-alives so a dead node fails a command within seconds instead of hanging it.

nspawn runs under a small supervisor (`ober.lab.supervise`) that starts it again when the container reboots
(nspawn exits 133 then, as systemd-nspawn@.service's ``RestartForceExitStatus=133`` expects), so a node survives
``systemctl reboot`` like a real machine. The nspawn process and the container's init change at each reboot: they
are looked up when needed (the supervisor's child, and its child), never remembered.

Stopping is by PID, never by name (other labs may run the same programs): ``systemctl poweroff`` inside, then, past
a deadline, SIGKILL to the container's init (nspawn's child: killing nspawn alone leaves the container running).
Every node's stop is registered with the lab, so `Lab.close` tears down whatever the test left.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ober.config import DEFAULT_INSTALL_PATH
from ober.errors import OberError
from ober.lab.image import DEFAULT_IMAGE, image_ready
from ober.lab.netns import Lab, run
from ober.lab.rgw import in_netns
from ober.lab.router import Router
from ober.render import install_paths

NETNS_DIR = Path("/run/netns")
IFNAME = "eth0"
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
KILL_TIMEOUT = 10.0
SSH_TIMEOUT = 30.0
SSH_PORT = 22
PROBE_TIMEOUT = 1.0
INSTALL_TIMEOUT = 600.0
POLL = 0.05
VENV = install_paths(DEFAULT_INSTALL_PATH)["venv"]
WHEELHOUSE = install_paths(DEFAULT_INSTALL_PATH)["wheelhouse"]
# The systemd states of a finished boot; "degraded" means some unit failed, which the caller may inspect.
BOOTED = ("running", "degraded")
CGROUP_PARENT = "ober-lab"
SUPERVISOR = Path(__file__).with_name("supervise.py")


@dataclass(frozen=True)
class LabKey:
    """The lab's SSH identity, and the known_hosts file holding every node's host keys."""

    private: Path
    known_hosts: Path

    @property
    def public(self) -> Path:
        """The public half, installed as root's authorized key on every node."""
        return self.private.with_name(self.private.name + ".pub")


def lab_key(lab: Lab) -> LabKey:
    """The lab's SSH key pair (made on first use, under the lab's private work directory)."""
    directory = lab.path("ssh")
    private = directory / "id_ed25519"
    if not private.exists():
        comment = f"{lab.prefix}lab"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)])
    known_hosts = directory / "known_hosts"
    known_hosts.touch(mode=0o600)
    return LabKey(private, known_hosts)


@dataclass
class NspawnNode:
    """A booted lab node. Build it with `boot_node`."""

    name: str
    ns: str
    address: str
    via: str
    """The namespace SSH connects from (the router's)."""
    key: LabKey
    root: Path
    """The overlay mount the container boots from; visible from the host while it is mounted."""
    upper: Path
    """The overlay's upper directory: everything the node wrote."""
    process: subprocess.Popen[bytes]
    """The supervisor (`ober.lab.supervise`): its child is systemd-nspawn, whose child is the container's init."""
    console: Path
    boot_seconds: float = 0.0
    system_state: str = ""
    """What ``systemctl is-system-running`` said when the boot finished."""
    _stopped: bool = field(default=False, repr=False)

    @property
    def nspawn_pid(self) -> int | None:
        """The systemd-nspawn running the container now (another one after each reboot); None between runs."""
        if self.process.poll() is not None:
            return None
        return next(iter(_children(self.process.pid)), None)

    @property
    def init_pid(self) -> int | None:
        """The container's systemd as the host sees it now (another PID after each reboot); None while it is down."""
        nspawn = self.nspawn_pid
        return None if nspawn is None else next(iter(_children(nspawn)), None)

    def ssh_argv(self, command: str) -> list[str]:
        """The full command that runs the remote shell ``command`` on this node as root."""
        options = {
            "BatchMode": "yes",
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.key.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            # Host keys are pinned at creation: a node presenting another key is refused, never learned.
            "StrictHostKeyChecking": "yes",
            "ConnectTimeout": "2",
            # A node that vanishes mid-command (crash) is noticed in about 6 s.
            "ServerAliveInterval": "2",
            "ServerAliveCountMax": "3",
            "LogLevel": "ERROR",
        }
        argv = ["ip", "netns", "exec", self.via, "ssh", "-F", "/dev/null", "-i", str(self.key.private)]
        for option, value in options.items():
            argv += ["-o", f"{option}={value}"]
        return [*argv, "-l", "root", self.address, "--", command]

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = SSH_TIMEOUT,
        check: bool = True,
        stdin: bytes = b"",
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the node as root over SSH and capture its output.

        Args:
            command: a shell command line, or an argv that is quoted for the remote shell.
            timeout: seconds before the SSH client is killed.
            check: raise when the command (or SSH, exit 255) fails.
            stdin: bytes fed to the command's standard input.

        Raises:
            OberError: the command timed out, or (with ``check``) failed; the message quotes its last line.
        """
        line = command if isinstance(command, str) else shlex.join(command)
        try:
            done = subprocess.run(self.ssh_argv(line), input=stdin, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise OberError(f"{self.name}: {line} did not finish in {timeout:g}s") from None
        result = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        )
        if check and result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise OberError(f"{self.name}: {line} failed (exit {result.returncode}): {last}")
        return result

    def put(self, local: Path, remote: str, mode: int = 0o644, *, timeout: float = SSH_TIMEOUT) -> None:
        """Copy a file to the node: written to a temporary file beside ``remote``, then renamed over it.

        A reader on the node sees the old file or the new one, never half of it.
        """
        target = shlex.quote(remote)
        script = (
            f'set -e; mkdir -p "$(dirname {target})"; tmp=$(mktemp {target}.XXXXXX); trap \'rm -f "$tmp"\' EXIT; '
            f'cat > "$tmp"; chmod {mode:o} "$tmp"; mv -f "$tmp" {target}; trap - EXIT'
        )
        self.run(script, stdin=local.read_bytes(), timeout=timeout)

    def put_tree(self, local: Path, remote: str, *, timeout: float = SSH_TIMEOUT) -> None:
        """Copy a directory to the node as ``remote`` (replacing it), as a tar stream over SSH.

        Unpacked beside ``remote`` and renamed into place, so an interrupted copy leaves no half tree there.
        """
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(local, arcname=".")
        target = shlex.quote(remote)
        script = (
            f"set -e; rm -rf {target}.new; mkdir -p {target}.new; tar -C {target}.new -xf -; "
            f"rm -rf {target}; mv {target}.new {target}"
        )
        self.run(script, stdin=archive.getvalue(), timeout=timeout)

    def sshd_answers(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """Tell whether sshd on the node sends its banner within ``timeout`` (from the router's namespace)."""
        return sshd_answers(self.via, self.address, timeout)

    def memory_bytes(self) -> int:
        """The node's memory: the proportional set size (PSS) of every process in the container, summed.

        PSS shares each page among the processes mapping it, so pages shared with other nodes (the image's
        libraries, through the page cache) are not counted in full for each node.
        """
        init = self.init_pid
        if init is None:
            return 0
        return sum(_pss(pid) for pid in [init, *descendants(init)])

    def crash(self) -> None:
        """Simulate the node dying: its link goes dark, then its init, and with it every process inside, is killed.

        The link goes first so nothing the dying processes send (FIN, RST) reaches the lab, as with a power loss:
        peers notice only by timeouts. The root stays mounted for a post-mortem until `stop`.

        Raises:
            OberError: the node's init is unknown, or the container did not exit.
        """
        run(["ip", "-n", self.ns, "link", "del", IFNAME], check=False)
        # A killed init ends nspawn with another status than a reboot's, so the supervisor does not start it again.
        if not self._kill_init():
            raise OberError(f"{self.name}: no container init to kill", f"see {self.console}")
        try:
            self.process.wait(KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise OberError(f"{self.name}: systemd-nspawn still runs after its init was killed") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Power the node off cleanly, killing its init past ``timeout``; then unmount its root. Idempotent.

        Raises:
            OberError: the container could not be stopped, or its root not unmounted.
        """
        if self._stopped:
            return
        if self.process.poll() is None:
            # The connection may drop while sshd stops, so the command's own result says nothing.
            with contextlib.suppress(OberError):
                self.run(["systemctl", "poweroff"], timeout=5, check=False)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # No more restarts (the node may have been rebooting), and the container's init is killed.
                self.process.terminate()
                self._kill_init()
                try:
                    self.process.wait(KILL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    nspawn = self.nspawn_pid
                    if nspawn is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(nspawn, signal.SIGKILL)
                    self.process.kill()
                    self.process.wait(KILL_TIMEOUT)
        unmount(self.root)
        self._stopped = True

    def _kill_init(self) -> bool:
        """SIGKILL the container's init, found now as the child of the supervisor's nspawn (so never a reused PID)."""
        pid = self.init_pid
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True


def boot_node(
    lab: Lab,
    router: Router,
    name: str,
    address: str,
    *,
    image: Path = DEFAULT_IMAGE,
    timeout: float = BOOT_TIMEOUT,
) -> NspawnNode:
    """Boot a node from ``image`` in namespace ``<lab prefix><name>``, at ``address`` on the router's link.

    Returns once sshd answers and systemd reports the boot finished (running or degraded).

    Args:
        lab: the lab that owns the namespace, the nspawn process, the files and the node's stop.
        router: the lab router the node's ``eth0`` is linked to (its default route).
        name: the node's short name: its namespace suffix, hostname and machine name.
        address: the node's address on the router's link (``100.64.0.11``).
        image: the read-only root image (`ober.lab.image.ensure_image`).
        timeout: seconds for the whole boot.

    Raises:
        OberError: no image, a tool missing, or the node not booting in time (the console log is named).
    """
    started = time.monotonic()
    if not image_ready(image):
        raise OberError(f"no node image at {image}", "build it with ober.lab.image.ensure_image()")
    for program, package in (("systemd-nspawn", "systemd-container"), ("ssh", "openssh-client")):
        if shutil.which(program) is None:
            raise OberError(f"{program} is not installed", f"apt-get install {package}")
    key = lab_key(lab)
    home = lab.path(name)
    root = mount_overlay(image, home)
    lab.cleanups.append(partial(unmount, root))
    prepare_root(root, name, key, address)
    ns = lab.netns(name)
    router.connect(ns, address, IFNAME)
    console = home / "console.log"
    argv = [
        "systemd-nspawn",
        "-D",
        str(root),
        "--register=no",  # no machined on this host
        "--keep-unit",  # and no systemd to make a scope unit
        "-M",
        name,
        "--boot",
        f"--network-namespace-path={NETNS_DIR / ns}",
        "--capability=CAP_NET_ADMIN",  # for `ip addr add` of the VIPs inside
    ]
    groups = node_cgroups(ns)
    lab.cleanups.append(partial(remove_cgroups, groups))
    process = _spawn(argv, console, groups)
    lab.processes.append(process)
    node = NspawnNode(name, ns, address, router.ns, key, root, home / "upper", process, console)
    lab.cleanups.append(node.stop)
    _wait_booted(node, started + timeout)
    node.boot_seconds = time.monotonic() - started
    return node


def install_ober(node: NspawnNode, wheelhouse: Path, *, venv: str = VENV, timeout: float = INSTALL_TIMEOUT) -> str:
    """Install ober on the node from ``wheelhouse`` (`ober.remote.wheelhouse.build_wheelhouse`), offline.

    The wheelhouse goes over SSH, the way a real node is bootstrapped (a real node shares no filesystem with the
    workstation); pip is given ``--no-index``, so the install never needs a route to PyPI.

    Returns:
        What ``ober --version`` prints on the node.

    Raises:
        OberError: the copy, the install or ``ober --version`` failed.
    """
    node.put_tree(wheelhouse, WHEELHOUSE, timeout=timeout)
    pip = f"{venv}/bin/pip"
    node.run(
        f"python3 -m venv {shlex.quote(venv)} && PIP_DISABLE_PIP_VERSION_CHECK=1 {shlex.quote(pip)} install -q "
        f"--no-index --find-links {WHEELHOUSE} ober",
        timeout=timeout,
    )
    return node.run([f"{venv}/bin/ober", "--version"]).stdout.strip()


def mount_overlay(image: Path, home: Path) -> Path:
    """Mount an overlay of ``image`` (read-only lower) at ``home/root``, its upper and work dirs in ``home``."""
    for path in (image, home):
        # overlayfs separates its options with commas and lower layers with colons.
        if set(str(path)) & {",", ":"}:
            raise OberError(f"overlayfs cannot use the path {path}", "use a path without ',' or ':'")
    upper, work, root = (home / part for part in ("upper", "work", "root"))
    for directory in (upper, work, root):
        directory.mkdir()
    options = f"lowerdir={image},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)])
    return root


def unmount(root: Path) -> None:
    """Unmount a node's root if it is mounted."""
    if root.is_mount():
        run(["umount", str(root)])


def prepare_root(root: Path, name: str, key: LabKey, address: str) -> None:
    """Make the node's root its own before boot: host keys, root's authorized key, machine id, hostname.

    The image's host keys (made when its openssh-server was installed) would be the same on every node; they are
    deleted (whiteouts in the upper directory) and new ones made. Each new public key is pinned for ``address``.
    """
    ssh_dir = root / "etc" / "ssh"
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    run(["ssh-keygen", "-A", "-f", str(root)])
    pinned = [f"{address} {' '.join(pub.read_text().split()[:2])}\n" for pub in sorted(ssh_dir.glob("ssh_host_*.pub"))]
    # A node booted again at an address replaces that address's old keys.
    kept = [line for line in key.known_hosts.read_text().splitlines(keepends=True) if line.split()[:1] != [address]]
    key.known_hosts.write_text("".join(kept + pinned))
    dot_ssh = root / "root" / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    authorized = dot_ssh / "authorized_keys"
    authorized.write_text(key.public.read_text())
    authorized.chmod(0o600)
    # A machine id shared by every node would make them one machine to systemd and journald.
    (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc" / "hostname").write_text(name + "\n")
    # The lab sets eth0 up from outside (the node's namespace, before boot), so the systemd-networkd that ober's
    # bootstrap enables for the VIPs manages no link that could come online, and the wait-online service enabled
    # with it would hold network-online.target (and ober-http after it) for its whole 2-minute timeout at every
    # boot. Where networkd manages the uplink, it returns once the uplink is up: here, wait for eth0 alone.
    wait_online = root / "etc" / "systemd" / "system" / "systemd-networkd-wait-online.service.d"
    wait_online.mkdir(parents=True, exist_ok=True)
    (wait_online / "ober-lab.conf").write_text(
        f"[Service]\nExecStart=\nExecStart=/usr/lib/systemd/systemd-networkd-wait-online --interface={IFNAME}\n"
    )
    # Its own name resolves locally, as on an installed Debian (127.0.1.1): the lab has no DNS, and ExaBGP looks
    # the host's name up at every start (socket.getfqdn), which otherwise waits 5 s for the resolver each time.
    hosts = root / "etc" / "hosts"
    text = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
    lines = [line for line in text.splitlines() if not line.startswith("127.0.1.1")]
    hosts.write_text("\n".join([*lines, f"127.0.1.1\t{name}"]) + "\n")


def sshd_answers(ns: str, address: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Tell whether an SSH server at ``address`` sends its banner within ``timeout``, seen from namespace ``ns``."""

    def probe() -> bool:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as connection:
            return connection.recv(64).startswith(b"SSH-")

    try:
        return in_netns(ns, probe, timeout=2 * timeout + 1)
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc, all its threads' children)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                pending += children
    return found


def _wait_booted(node: NspawnNode, deadline: float) -> None:
    """Wait for sshd's banner, then for systemd to finish booting; note systemd's state."""
    while not node.sshd_answers():
        _check_alive(node)
        if time.monotonic() > deadline:
            raise OberError(f"{node.name}: sshd did not answer on {node.address}:22 in time", f"see {node.console}")
        time.sleep(POLL)
    while True:
        # `--wait` returns when the boot is over; it exits non-zero for "degraded", so only the word counts.
        remaining = max(deadline - time.monotonic(), 1.0)
        done = node.run(["systemctl", "is-system-running", "--wait"], timeout=remaining, check=False)
        node.system_state = done.stdout.strip()
        if node.system_state in BOOTED:
            break
        _check_alive(node)
        if time.monotonic() > deadline:
            raise OberError(f"{node.name}: systemd is {node.system_state or 'unreachable'!r} after boot")
        time.sleep(POLL)


def node_cgroups(ns: str) -> list[Path]:
    """The cgroups a node's nspawn runs in, one per mounted hierarchy that systemd uses.

    With ``--keep-unit`` and no systemd on the host, nspawn puts the container's cgroups below its own cgroup.
    Started from the host's root cgroup, every node shares one ``system.slice/UNIT`` per unit name: a unit's cgroup
    then does not look empty while another node runs the same unit, and a stop can wait out the unit's whole stop
    timeout. One cgroup per node keeps their units apart.
    """
    roots = [Path("/sys/fs/cgroup")] if (Path("/sys/fs/cgroup") / "cgroup.procs").exists() else []
    roots += [Path("/sys/fs/cgroup") / name for name in ("systemd", "unified")]
    return [root / CGROUP_PARENT / ns for root in roots if (root / "cgroup.procs").exists()]


def remove_cgroups(groups: Sequence[Path]) -> None:
    """Remove a stopped node's cgroups (deepest first; one still in use stays, to the kernel)."""
    for group in groups:
        if not group.is_dir():
            continue
        for directory, _, _ in os.walk(group, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # noqa: PTH106 - cgroupfs: rmdir of a directory that still lists control files
        with contextlib.suppress(OSError):
            os.rmdir(group.parent)  # noqa: PTH106 - the shared parent, once no node uses it


def _spawn(argv: Sequence[str], log: Path, groups: Sequence[Path] = ()) -> subprocess.Popen[bytes]:
    """Start systemd-nspawn under its supervisor, in the background from the host's namespaces; console to ``log``.

    Returns the supervisor (`ober.lab.supervise`), which starts nspawn again after a reboot, each time in
    ``groups`` (the node's cgroups). Not through `Lab.spawn`: ``ip netns exec`` mounts a fresh /sys without the
    host's cgroup mounts, where nspawn fails ("Failed to determine whether the unified cgroups hierarchy is used").
    nspawn joins the node's network namespace itself (``--network-namespace-path``); the caller hands the
    supervisor to the lab to track.
    """
    # This makes /proc/sys/net writable inside, which CAP_NET_ADMIN alone does not.
    env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
    command = [sys.executable, "-I", str(SUPERVISOR)]
    for group in groups:
        group.mkdir(parents=True, exist_ok=True)
        command += ["--cgroup", str(group)]
    with log.open("ab") as out:
        # Its own session, like every lab daemon (see `ober.lab.netns.spawn_in`): stopped by PID only.
        return subprocess.Popen(
            [*command, "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _check_alive(node: NspawnNode) -> None:
    if node.process.poll() is not None:
        lines = node.console.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise OberError(
            f"{node.name}: systemd-nspawn exited (status {node.process.returncode}): {lines[-1]}",
            f"see {node.console}",
        )


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _pss(pid: int) -> int:
    """A process's proportional set size in bytes; 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0
