"""The files a lab writes for the fleet tools: inventory, secrets, ssh_config, known_hosts; where they live.

Everything is written mode 600 and atomically (the inventory is also loaded by ober before it is put in place: a
lab whose inventory ober refuses would be of no use).
"""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from ober.config import DEFAULT_INSTALL_PATH
from ober.hostlists import collect
from ober.inventory import load_inventory
from ober.lab import relay as relay_module
from ober.lab.labstate import write_private
from ober.lab.rgw import RGW_PORT
from ober.lab.site import RGWS, VIPS
from ober.render import install_paths

ROUTER_AS, NODE_AS = 65000, 65001
NODE_PEM = install_paths(DEFAULT_INSTALL_PATH)["certs_dir"] + "/s3.pem"
"""Where the fleet puts the site certificate on each node (the inventory's ``files:``)."""
# The secret's name, not its value.
STATS_SECRET = "stats_password"  # noqa: S105


class LabPaths:
    """Where a lab's files are, under its directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def inventory_path(self) -> Path:
        """The lab's inventory (``ober fleet … -i``)."""
        return self.dir / "inventory.yaml"

    @property
    def secrets_path(self) -> Path:
        """The secrets file the inventory refers to (``--secrets``)."""
        return self.dir / "login"

    @property
    def ssh_config(self) -> Path:
        """The OpenSSH client config reaching every node by name."""
        return self.dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        """Every node's host keys, by name and address."""
        return self.dir / "known_hosts"

    @property
    def key(self) -> Path:
        """The private key that logs in as root on every node."""
        return self.dir / "ssh" / "id_ed25519"

    @property
    def pem(self) -> Path:
        """The site certificate with its key: push it to each node as ``/opt/ober/etc/certs/s3.pem``."""
        return self.dir / "certs" / "s3.pem"

    @property
    def ca_pem(self) -> Path:
        """The site certificate alone: what S3 clients trust."""
        return self.dir / "certs" / "ca.pem"


def write_client_files(paths: LabPaths, router_ns: str, router_ip: str, addresses: dict[str, str]) -> None:
    """Write known_hosts, ssh_config, the secrets file and the inventory (checked by ober before it is in place).

    Args:
        paths: the lab's directory.
        router_ns: the namespace the relay runs in (the router's: it reaches every node).
        router_ip: the router's address on the node link, the nodes' BGP neighbor.
        addresses: node name → address, in order.
    """
    fleet, directory = paths, paths.dir
    pinned = (directory / "ssh" / "known_hosts").read_text().splitlines()
    lines = []
    for name, address in addresses.items():
        lines += [f"{name},{line}" for line in pinned if line.split()[:1] == [address]]
    write_private(fleet.known_hosts, "\n".join(lines) + "\n")
    # The relay run as a script, not ``-m ober.lab.relay``: it needs only the standard library, and importing the
    # ober package would add about 0.2 s to every SSH connection.
    program = " ".join(shlex.quote(part) for part in (sys.executable, "-I", relay_module.__file__ or ""))
    relay = f"ip netns exec {router_ns} {program} %h %p"
    entries = ["# Written by ober lab up: the lab's nodes, reachable only through its router's namespace.\n"]
    for name, address in addresses.items():
        # By name and by address: the fleet tools look a node up by its inventory address.
        entries.append(
            f"Host {name} {address}\n"
            f"    HostName {address}\n"
            "    User root\n"
            f"    IdentityFile {fleet.key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {fleet.known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 10\n"
            "    ServerAliveInterval 2\n"
            "    ServerAliveCountMax 3\n"
            "    LogLevel ERROR\n"
            f"    ProxyCommand {relay}\n"
        )
    write_private(fleet.ssh_config, "\n".join(entries))
    write_private(fleet.secrets_path, yaml.safe_dump({STATS_SECRET: secrets.token_urlsafe(18)}))
    inventory = lab_inventory(fleet, router_ip, addresses)
    staged = directory / ".inventory.yaml.new"
    staged.write_text(yaml.safe_dump(inventory, sort_keys=False))
    load_inventory(staged)  # a lab that writes an inventory ober refuses would be no use
    staged.rename(fleet.inventory_path)


def lab_inventory(paths: LabPaths, router_ip: str, addresses: dict[str, str]) -> dict[str, Any]:
    """The lab's inventory: site ``lab``, one group of nodes, both VIPs on both RGW groups, the lab's SSH files."""
    fleet = paths
    names, ips = list(addresses), list(addresses.values())
    network, first = ips[0].rsplit(".", 1)
    last = ips[-1].rsplit(".", 1)[1]
    return {
        "site": "lab",
        "ssh": {"user": "root", "config": str(fleet.ssh_config), "known_hosts": str(fleet.known_hosts)},
        "fleet": {"min_available": 1, "max_unavailable": 1},
        # `ober fleet bootstrap` copies the site certificate to every node.
        "files": [{"source": str(fleet.pem), "dest": NODE_PEM, "mode": "0600"}],
        "config": {
            "bgp": {
                "local_as": NODE_AS,
                "peer_as": ROUTER_AS,
                "hold_time": 3,
                # The router holds a node's routes while its ExaBGP restarts (BIRD: graceful restart on), so
                # `ober fleet restart` keeps the ECMP set unchanged.
                "graceful_restart": 120,
                "neighbors": router_ip,
            },
            "vips": [{"name": f"s3-{group[-1]}", "address": vip, "backend": group} for group, vip in VIPS.items()],
            "backends": {
                group: {"servers": list(rgws), "port": RGW_PORT, "check": {"method": "GET", "path": "/"}}
                for group, rgws in RGWS.items()
            },
            "certificates": {"pem": NODE_PEM, "http": "redirect"},
            # On each node's own address, behind a login over TLS (an open stats page is refused).
            "stats": {"auth": {"user": "admin", "password_secret": STATS_SECRET}, "tls": True},
            # This kernel has no dummy driver: the VIPs go on lo, managed by networkd.
            "network": {"manager": "networkd", "interface": "lo"},
            "kernel_profile": "none",
            # The sandbox caps file descriptors at 20000; HAProxy wants 2 per connection.
            "haproxy": {"maxconn": 5000},
        },
        "groups": {
            "lab": {
                "nodes": collect(names),
                # Zipped with the names: node01 gets the first address, and so on.
                "address": ips[0] if len(ips) == 1 else f"{network}.[{first}-{last}]",
            }
        },
    }
