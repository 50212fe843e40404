"""Real OpenSSH servers for testing the fleet controller's SSH transport, without touching the host.

The host has no sshd and must not get one: the servers are the Debian 13 image's own ``/usr/sbin/sshd`` (with
sudo), chrooted into a private overlay of the image, each with its own config and host key. A server listens on a
host loopback address (``127.x.y.z``, traffic never leaves ``lo``) or inside a network namespace the lab made, which
a client reaches through an ssh_config ``ProxyCommand`` (`proxy_command`, as the lab fleet does).

Each sshd runs as PID 1 of its own PID namespace (``unshare --pid --kill-child``) with its own mount namespace for
``/proc``: stopping it by its PID (SIGTERM to ``unshare``) ends every session it forked, and leaves no mount
behind. The overlay itself is unmounted by the lab's cleanup.

Accounts in the overlay: ``root`` and ``ober`` (password-less sudo) and ``plain`` (no sudo), all logging in with the
farm's client key. `proxy_command` runs ``relay.py`` (next to this file) as the relay: the host has no nc.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ober.errors import OberError
from ober.lab.image import DEFAULT_IMAGE
from ober.lab.netns import Lab, run, spawn_in
from ober.lab.nspawn import mount_overlay, unmount

START_TIMEOUT = 10.0
RELAY = Path(__file__).with_name("relay.py")
STOP_TIMEOUT = 10.0
POLL = 0.05
USERS = ("root", "ober", "plain")
SUDO_USER = "ober"
_CONF = "etc/ober-lab"


@dataclass
class SshServer:
    """One running sshd."""

    name: str
    address: str
    port: int
    ns: str | None
    """The network namespace it listens in, or None for the host's loopback."""
    host_key: str
    """Its public host key, ``TYPE BASE64``."""
    process: subprocess.Popen[bytes]
    log: Path

    def known_hosts_line(self) -> str:
        """The line that pins this server's key in a known_hosts file."""
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_key}\n"

    def pids(self) -> list[int]:
        """The sshd and every session under it (host PIDs), for freezing a server in tests."""
        return _descendants(self.process.pid)

    def stop(self) -> None:
        """Stop it by PID, with every session: SIGKILL to ``unshare`` (idempotent).

        Its death kills sshd, PID 1 of the namespace, and with it every process inside. ``unshare --fork``
        ignores SIGTERM, so a polite stop would only wait for a timeout.
        """
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)


class SshdFarm:
    """Many sshd servers sharing one overlay of the node image; everything is torn down with the lab.

    Args:
        lab: the lab that owns the overlay, the processes and the namespaces.
        image: the Debian 13 node image (has openssh-server and sudo).
    """

    def __init__(self, lab: Lab, image: Path = DEFAULT_IMAGE) -> None:
        if not (image / "usr" / "sbin" / "sshd").exists() or not (image / "usr" / "bin" / "sudo").exists():
            raise OberError(f"{image}: no sshd or sudo in the node image", "rebuild it: ober.lab.image.ensure_image()")
        self.lab = lab
        home = lab.path("sshd")
        self.root = mount_overlay(image, home)
        lab.cleanups.append(partial(unmount, self.root))
        self.key = home / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ober-sshd-farm", "-f", str(self.key)])
        self._prepare()
        self.servers: list[SshServer] = []

    def _prepare(self) -> None:
        """Accounts, authorized keys, sudo rights, a hostname sudo can resolve."""
        conf = self.root / _CONF
        (conf / "authorized_keys").mkdir(parents=True, mode=0o755)
        public = (self.key.parent / (self.key.name + ".pub")).read_text()
        for user in USERS:
            if user != "root":
                run(["chroot", str(self.root), "useradd", "-m", "-s", "/bin/sh", user])
            # '*' is "no password" without being a locked account (sshd refuses locked accounts without PAM).
            run(["chroot", str(self.root), "usermod", "-p", "*", user])
            (conf / "authorized_keys" / user).write_text(public)
        sudoers = self.root / "etc" / "sudoers.d" / "ober-lab"
        sudoers.write_text(f"{SUDO_USER} ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        (self.root / "run" / "sshd").mkdir(parents=True, exist_ok=True, mode=0o755)
        hosts = self.root / "etc" / "hosts"
        hosts.write_text(hosts.read_text() + f"127.0.1.1 {socket.gethostname()}\n")

    def start(self, address: str | None = None, *, port: int = 22, ns: str | None = None) -> SshServer:
        """Start one sshd on ``address:port`` (default: a free random 127.x.y.z on the host's loopback).

        Args:
            address: where to listen; inside ``ns`` it must exist there (e.g. on the namespace's ``lo``).
            port: the TCP port.
            ns: a lab network namespace to listen in, or None for the host's loopback.

        Raises:
            OberError: sshd did not start listening in time (the message quotes its log).
        """
        if address is None:
            address = _free_loopback(port) if ns is None else "127.0.0.1"
        name = f"s{len(self.servers) + 1}-{secrets.token_hex(2)}"
        conf = self.root / _CONF / name
        conf.mkdir(mode=0o700)
        key = conf / "ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)])
        inside = f"/{_CONF}/{name}"
        (conf / "sshd_config").write_text(
            f"ListenAddress {address}:{port}\n"
            f"HostKey {inside}/ssh_host_ed25519_key\n"
            "PidFile none\n"
            # No PAM in a chroot without a system; key logins only.
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            f"AuthorizedKeysFile /{_CONF}/authorized_keys/%u\n"
            # Tests fail logins on purpose; OpenSSH 9.8+ would then refuse this client's address for a while.
            "PerSourcePenalties no\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n"
            "LogLevel INFO\n"
        )
        log = self.lab.path("sshd", "logs") / f"{name}.log"
        argv = [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            f"--mount-proc={self.root / 'proc'}",
            "chroot",
            str(self.root),
            "/usr/sbin/sshd",
            "-D",
            "-e",
            "-f",
            f"{inside}/sshd_config",
        ]
        if ns is None:
            with log.open("ab") as out:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        else:
            process = spawn_in(ns, argv, log=log)
        server = SshServer(
            name, address, port, ns, " ".join(key.with_suffix(".pub").read_text().split()[:2]), process, log
        )
        self.servers.append(server)
        # Stopped before the overlay is unmounted: the lab runs its cleanups newest first.
        self.lab.cleanups.append(server.stop)
        _wait_listening(server)
        return server

    def new_host_key(self, server: SshServer) -> SshServer:
        """Restart ``server`` on the same address with a fresh host key (a reinstalled node, or an impostor)."""
        server.stop()
        self.servers.remove(server)
        return self.start(server.address, port=server.port, ns=server.ns)


def proxy_command(ns: str) -> str:
    """An ssh_config ``ProxyCommand`` that reaches ``%h:%p`` from inside the namespace ``ns``.

    The relay runs as a plain script (``-I``: no site packages, no ober import), so it starts in milliseconds.
    """
    return f"ip netns exec {ns} {sys.executable} -I {RELAY} %h %p"


def freeze(server: SshServer) -> list[int]:
    """Stop (SIGSTOP) the server and its sessions, like a node that hangs; returns the PIDs to `thaw`."""
    pids = server.pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return pids


def thaw(pids: list[int]) -> None:
    """Continue what `freeze` stopped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _free_loopback(port: int) -> str:
    """A random 127.x.y.z where ``port`` is free (other labs may run their own servers at the same time)."""
    for _ in range(50):
        address = f"127.{secrets.randbelow(150) + 100}.{secrets.randbelow(256)}.{secrets.randbelow(250) + 2}"
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        return address
    raise OberError(f"no free loopback address for port {port}")


def _wait_listening(server: SshServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace") if server.log.exists() else ""
        if "Server listening on" in text:
            return
        if server.process.poll() is not None:
            break
        time.sleep(POLL)
    server.stop()
    last = (server.log.read_text(errors="replace").strip() or "no output").splitlines()[-1]
    raise OberError(f"sshd {server.name} did not start on {server.address}:{server.port}: {last}")
