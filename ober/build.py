"""One node's files, made ready to ship: resolve whitelist names → render → check with the real tools."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ober.config import NodeConfig
from ober.render import NODE_USERS, Rendered, RunAs, render_node
from ober.resolve import Lookup, lookup_ipv4, resolve_whitelists
from ober.validate import CheckResult, check_exabgp, check_haproxy


@dataclass(frozen=True)
class Built:
    """A node's rendered files and what checking them found."""

    rendered: Rendered
    checks: list[CheckResult] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """What the check could not cover (an ACME certificate not issued yet), one line each."""

    @property
    def notes(self) -> list[str]:
        """What the tools warned about, and what was not checked, one line each."""
        return [f"{check.tool}: {warning}" for check in self.checks for warning in check.warnings] + self.unchecked

    @property
    def placeholders(self) -> list[str]:
        """Files the node has but this machine did not, stood in for by placeholders during the check."""
        return sorted({path for check in self.checks for path in check.placeholders})


HaproxyCheck = Callable[[NodeConfig, Mapping[str, str]], CheckResult]
"""How to run ``haproxy -c`` on a node's files (`check_haproxy` here; `ober.remote.nodecheck` on a node)."""


def build_node(
    config: NodeConfig,
    secrets: Mapping[str, str],
    *,
    check: bool = True,
    lookup: Lookup = lookup_ipv4,
    haproxy: HaproxyCheck = check_haproxy,
    run_as: RunAs = NODE_USERS,
) -> Built:
    """Render a node's files and, unless ``check`` is false, validate them with ``haproxy -c`` and ExaBGP.

    ``run_as``: the users the daemons run as (stand-ins only where the node's users do not exist, as in a lab).

    Raises:
        ConfigError: a whitelist name does not resolve.
        SecretsError: a referenced secret is missing.
        RenderError: a template failed or a tool rejected the result.
    """
    resolved = resolve_whitelists(config, lookup)
    rendered = render_node(config, secrets, resolved=resolved.whitelists, run_as=run_as)
    if not check:
        return Built(rendered)
    checks = [haproxy(resolved, secrets), check_exabgp(resolved, secrets)]
    crt = config.certificates.crt_path(config.install_path)
    unchecked = []
    if config.certificates.acme is not None and any(crt in check.placeholders for check in checks):
        # Not "checked": there is no certificate yet, only the stand-in the check used (and the node starts with).
        unchecked.append(
            f"certificates: no ACME certificate in {crt} here, so none was checked (HAProxy was, with a placeholder); "
            "the node starts on a placeholder until 'ober fleet certs renew'"
        )
    return Built(rendered, checks, unchecked)
