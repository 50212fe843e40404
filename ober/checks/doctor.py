"""``ober doctor`` and ``ober test``: the checks of each, in order, with every secret value masked."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from ober.certs import check_certificates
from ober.checks.base import PROBE_TIMEOUT, Check, scrub
from ober.checks.bgp import BGP_PORT, check_bgp_state, check_bgp_tcp
from ober.checks.config import check_config, check_rendered, check_stats_exposure
from ober.checks.host import (
    check_haproxy_state,
    check_os,
    check_own_name,
    check_python,
    check_root,
    check_units,
    read_os_release,
)
from ober.checks.keepalive import check_keepalive
from ober.checks.rgw import check_rgw, check_sse_c
from ober.errors import SecretsError
from ober.secrets import load_secrets
from ober.status import exabgp_root, node_status


def _secrets(path: Path | None) -> tuple[list[Check], dict[str, str]]:
    """The secrets file's values if there is one; an explicit but unusable file is a failed check."""
    try:
        return [], load_secrets(path, required=path is not None)
    except SecretsError as exc:
        return [Check("secrets", "fail", exc.message, exc.fix)], {}


def run_test(
    config_path: str | Path,
    *,
    secrets_path: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
    now: datetime | None = None,
    bgp_port: int = BGP_PORT,
) -> list[Check]:
    """``ober test``: config validity, rendered files, BGP TCP, RGW and certificates; no service is started."""
    checks, secrets = _secrets(secrets_path)
    check, config = check_config(config_path)
    checks.append(check)
    if config is None:
        return scrub(checks, secrets)
    checks += check_rendered(config, secrets)
    checks += check_bgp_tcp(config, timeout, secrets=secrets, port=bgp_port)
    checks += check_rgw(config, timeout)
    checks += check_sse_c(config, secrets, timeout, through="rgw")
    checks += check_certificates(config, now)
    return scrub(checks, secrets)


def run_doctor(
    config_path: str | Path,
    *,
    secrets_path: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
    now: datetime | None = None,
    euid: int | None = None,
    os_release: str | None = None,
    bgp_port: int = BGP_PORT,
) -> list[Check]:
    """``ober doctor``: the machine, then (once bootstrapped) units, config, BGP, RGW and certificates.

    Before bootstrap (no config file) it reports the machine's checks and a "not bootstrapped" warning.

    Args:
        config_path: the node's ``ober.yaml``.
        secrets_path: a secrets file (optional on a node; used for MD5 probes and real-value rendering).
        timeout: seconds for each network probe.
        now: the time to judge certificate expiry against.
        euid: the effective uid (default: this process's).
        os_release: os-release text (default: read from this machine).
        bgp_port: the BGP port.
    """
    checks = [
        check_python(),
        check_root(os.geteuid() if euid is None else euid),
        check_os(os_release if os_release is not None else read_os_release()),
        check_own_name(),
    ]
    if not Path(config_path).exists():
        checks.append(
            Check("bootstrap", "warn", f"not bootstrapped: {config_path} does not exist", "run ober bootstrap")
        )
        return checks
    found, secrets = _secrets(secrets_path)
    check, config = check_config(config_path)
    checks += [*found, check]
    if config is None:
        return scrub(checks, secrets)
    checks += check_units()
    checks += check_rendered(config, secrets)
    checks += check_stats_exposure(config)
    status = node_status(config, exabgp_root=exabgp_root(config))
    checks.append(check_haproxy_state(status))
    checks += check_bgp_state(config, status)
    # A session that is not up: probe TCP, to tell an unreachable router from one refusing the BGP session.
    sessions = status.get("bgp", {}).get("sessions", {})
    down = [neighbor for neighbor in config.bgp.neighbors if sessions.get(neighbor) != "established"]
    if down:
        checks += check_bgp_tcp(config, timeout, secrets=secrets, neighbors=down, port=bgp_port)
    checks += check_rgw(config, timeout)
    checks += check_keepalive(config, timeout)
    checks += check_sse_c(config, secrets, timeout, through="vip")
    checks += check_certificates(config, now)
    return scrub(checks, secrets)
