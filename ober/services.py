"""systemd actions on ober's units, and what each changed file needs to take effect."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from ober.config import NodeConfig
from ober.drain import wake_health
from ober.errors import OberError
from ober.haproxy_runtime import snapshot
from ober.healthd import file_digest, state_file
from ober.render import DISCOVERY_UNITS, UNIT_DIR, discovery_groups, paths
from ober.status import unit_state

SYSTEMCTL_TIMEOUT = 90.0


def systemctl(*args: str) -> None:
    """Run ``systemctl ARGS``; a failure is an OberError quoting systemd."""
    if shutil.which("systemctl") is None:
        raise OberError("systemctl is not available here", "run this on a node with systemd")
    try:
        done = subprocess.run(
            ["systemctl", *args], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise OberError(f"systemctl {' '.join(args)} did not finish in {SYSTEMCTL_TIMEOUT:g}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        unit = args[-1]
        raise OberError(f"systemctl {' '.join(args)}: {last}", f"see: journalctl -u {unit} -n 50")


# Where each network stack keeps the VIP interface's files, and how it takes a change without a restart.
NETWORK_DIRS = {
    "netplan": "/etc/netplan/",
    "networkd": "/etc/systemd/network/",
    "networkmanager": "/etc/NetworkManager/system-connections/",
}
NETWORK_APPLY = {
    "netplan": "netplan apply",
    "networkd": "networkctl reload",
    "networkmanager": "nmcli connection reload",
}


def command(argv: list[str]) -> None:
    """Run a system command; a failure is an OberError quoting its last line."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False)
    except FileNotFoundError:
        raise OberError(f"{argv[0]} is not installed here", "check network.manager in ober.yaml") from None
    except subprocess.TimeoutExpired:
        raise OberError(f"{' '.join(argv)} did not finish in {SYSTEMCTL_TIMEOUT:g}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise OberError(f"{' '.join(argv)}: {last}")


CERTS_WATCH = "restart ober-certs.path"
BGP_RESTART = "restart ober-bgp"
DISCOVERY_START = "restart ober-discovery.timer"
DISCOVERY_STOP = "stop ober-discovery.timer"
DISCOVERY_SERVICE = "ober-discovery.service"
HEALTH_RELOAD = "reread ober-health"
"""Not systemctl: the running ``ober health`` reads ober.yaml again, and ``ober config`` waits until it has."""


def reload_for(config: NodeConfig, changed: Iterable[str]) -> list[str]:
    """The actions (as systemctl argument strings) the changed paths need, in order; HAProxy is reloaded hitlessly."""
    changed = set(changed)
    p = paths(config)
    actions: list[str] = []
    if any(path.startswith("/etc/systemd/system/ober-") for path in changed):
        actions.append("daemon-reload")
    if any(path.startswith("/etc/sysctl.d/") for path in changed):
        actions.append("restart systemd-sysctl")
    if any(path.startswith("/etc/systemd/journald.conf.d/") for path in changed):
        actions.append("restart systemd-journald")
    if any(path.startswith(NETWORK_DIRS[config.network.manager]) for path in changed):
        actions.append(NETWORK_APPLY[config.network.manager])
    http_inputs = {p["haproxy_cfg"], p["secrets_env"], p["acme_map"], "/etc/systemd/system/ober-http.service"}
    if changed & http_inputs or any(path.startswith(p["whitelist_dir"]) for path in changed):
        actions.append("reload ober-http")
    if changed & {f"/etc/systemd/system/ober-certs.{kind}" for kind in ("path", "service")}:
        # The certificate watcher starts with ober-http (Wants=); on a node already serving, start it (or take its
        # new settings) now, or a renewed certificate would wait for the next HAProxy restart.
        actions.append(CERTS_WATCH)
    if changed & {f"{UNIT_DIR}/{unit}" for unit in DISCOVERY_UNITS}:
        if discovery_groups(config):
            # Like the certificate watcher: started with ober-http (Wants=), so start it (or take its new interval)
            # now on a node already serving.
            actions.append(DISCOVERY_START)
        else:
            # No group has discovery any more, and its unit files are gone: stopped first, while systemd still has
            # them (after the daemon-reload, a timer whose service is gone is left "failed", not stopped).
            actions.insert(0, DISCOVERY_STOP)
    if changed & {p["exabgp_conf"], "/etc/systemd/system/ober-bgp.service"}:
        # Restart, not reload: exabgp.conf holds only the neighbors, and ExaBGP 5.0's reload (SIGUSR1) gives a new
        # or renamed neighbor (router-id, ASNs, addresses) an empty RIB while `ober health`, which is not restarted,
        # announces only on state changes: that router would never get the VIPs (seen in the lab: router-id changed,
        # session back, no route). A restart withdraws, reconnects and re-announces after `rise` checks.
        actions.append(BGP_RESTART)
    if p["config"] in changed:
        # Last: after a restart of ober-bgp the new helper reads the new file anyway; either way, wait for it.
        actions.append(HEALTH_RELOAD)
    return actions


def run_actions(actions: list[str], config: NodeConfig | None = None) -> list[str]:
    """Do ``reload_for``'s actions, skipping reloads (and ExaBGP's restart) of units not running; returns those done.

    ``config`` (the new one) is needed for :data:`HEALTH_RELOAD`.
    """
    done: list[str] = []
    for action in actions:
        verb, _, unit = action.partition(" ")
        if (verb in ("reload", "reread") or action == BGP_RESTART) and unit_state(_unit(unit)) != "active":
            continue  # a stopped node stays stopped: it reads the new files when it starts
        if action == HEALTH_RELOAD:
            if config is not None:
                health_takes(config)
            done.append(action)
            continue
        if action in (CERTS_WATCH, DISCOVERY_START) and unit_state("ober-http") != "active":
            continue
        if action == DISCOVERY_STOP:
            # The timer first (it starts no run after that), then a run it started just before, which may be going
            # on against the new ober.yaml without discovery (it would fail: nothing to do) and end "failed" later.
            for each in (unit, DISCOVERY_SERVICE):
                if unit_state(each) in ("active", "activating"):
                    systemctl("stop", each)
            # A failed last run would stay listed as failed (systemctl --failed) with no unit file left to fix.
            if unit_state(DISCOVERY_SERVICE) == "failed":
                systemctl("reset-failed", DISCOVERY_SERVICE)
            done.append(action)
            continue
        if action in NETWORK_APPLY.values():
            command(action.split())
        else:
            systemctl(*action.split())
        done.append(action)
    return done


def _unit(name: str) -> str:
    """The systemd unit an action is about (``ober health`` runs under ExaBGP, in ober-bgp)."""
    return "ober-bgp" if name == "ober-health" else name


def health_takes(config: NodeConfig, timeout: float | None = None) -> None:
    """Wake the running ``ober health`` and wait until its state file says the new ober.yaml is in effect.

    Raises:
        OberError: it did not take the file within ``timeout`` [two intervals plus 10 s].
    """
    wanted = file_digest(Path(paths(config)["config"]))
    limit = timeout if timeout is not None else 2 * config.health.interval + 10.0
    deadline = time.monotonic() + limit
    while True:
        wake_health(config)  # look now, not at the next interval
        running = _health_digest(config)
        if running == wanted or running is OLD_HELPER:
            return
        if time.monotonic() >= deadline:
            raise OberError(
                f"ober health did not take the new {paths(config)['config']} within {limit:g}s",
                "see: ober logs -n 50 (ober-bgp); restart it with: systemctl restart ober-bgp",
            )
        time.sleep(0.1)


OLD_HELPER = "(an ober health of an earlier ober, which reads its config only at start)"


def _health_digest(config: NodeConfig) -> str | None:
    """The config fingerprint the running ``ober health`` publishes; OLD_HELPER if it publishes none."""
    try:
        data = json.loads(state_file(config).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if "config" not in data:
        # Such a helper is replaced when ober-bgp restarts (an upgrade does that); waiting would only time out.
        return OLD_HELPER
    value = data["config"]
    return value if isinstance(value, str) else None


def verify_haproxy(config: NodeConfig, timeout: float = 10.0) -> None:
    """HAProxy answers on its runtime socket within ``timeout`` (after a reload)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            snapshot(paths(config)["admin_socket"], config.health.timeout)
            return
        except OberError as exc:
            if time.monotonic() >= deadline:
                raise OberError(
                    f"HAProxy does not answer after the reload: {exc.message}", "see: journalctl -u ober-http -n 50"
                ) from None
            time.sleep(0.2)
