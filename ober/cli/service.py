"""``ober start|stop|restart|reload|logs``: the node's services."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import load_config
from ober.errors import OberError
from ober.haproxy_state import after_reload, worker_pid
from ober.lifecycle import graceful_stop
from ober.render import paths
from ober.services import systemctl, verify_haproxy

UNITS = {"http": "ober-http", "bgp": "ober-bgp"}


@click.command()
@config_option
@json_option
@click.pass_obj
def start(out: Output, config_path: Path) -> None:
    """Start HAProxy, then ExaBGP (which announces once ober health sees the node healthy)."""
    config = load_config(config_path)
    systemctl("start", "ober-http", "ober-bgp")
    verify_haproxy(config)
    if out.as_json:
        out.json({"started": True})
    out.print("[green]✓[/] started: the VIPs are announced after `rise` good checks")


@click.command()
@config_option
@click.option("--timeout", type=float, default=None, help="Seconds to wait for connections [health.drain_timeout].")
@json_option
@click.pass_obj
def stop(out: Output, config_path: Path, timeout: float | None) -> None:
    """Stop gracefully: withdraw, let routers converge, wait for connections to end, then stop."""
    config = load_config(config_path)
    report = graceful_stop(config, systemctl, timeout=timeout, log=out.print)
    if out.as_json:
        out.json(
            {
                "stopped": True,
                "withdrawn": report.withdrawn,
                "in_flight": report.in_flight,
                "sessions_left": report.sessions_left,
                "waited": round(report.waited, 2),
            }
        )
        return
    if report.sessions_left:
        out.print(f"[yellow]![/] stopped after {report.waited:.1f}s, cutting {report.sessions_left} client sessions")
        return
    out.print(f"[green]✓[/] stopped after {report.waited:.1f}s; every request in flight finished")


@click.command()
@config_option
@click.option("--timeout", type=float, default=None, help="Seconds to wait for connections [health.drain_timeout].")
@json_option
@click.pass_obj
def restart(out: Output, config_path: Path, timeout: float | None) -> None:
    """Graceful stop, then start (for a config change, `ober reload` keeps the node serving)."""
    config = load_config(config_path)
    graceful_stop(config, systemctl, timeout=timeout, log=out.print)
    systemctl("start", "ober-http", "ober-bgp")
    verify_haproxy(config)
    out.print("[green]✓[/] restarted")


@click.command()
@config_option
@json_option
@click.pass_obj
def reload(out: Output, config_path: Path) -> None:
    """Hitless: HAProxy re-reads its files (checked first), ExaBGP re-reads its config; no connection drops."""
    config = load_config(config_path)
    before = worker_pid(paths(config)["admin_socket"], config.health.timeout)
    systemctl("reload", "ober-http")
    systemctl("reload", "ober-bgp")
    # Not just "the socket answers": after a reload HAProxy could not load, the old worker answers.
    problems = after_reload(config, before)
    for problem in problems:
        out.warn(f"degraded: {problem}")
    if out.as_json:
        out.json({"reloaded": True, "degraded": problems})
        return
    out.print(
        "[yellow]![/] reloaded; HAProxy serves degraded (the warnings above)" if problems else "[green]✓[/] reloaded"
    )


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--service", type=click.Choice(sorted(UNITS)), default=None, help="Only one service.")
def logs(follow: bool, lines: int, service: str | None) -> None:
    """The journal of ober's services (HAProxy, ExaBGP and ober health's [ober] lines)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise OberError("journalctl is not available here", "run this on a node with systemd")
    units = [UNITS[service]] if service else list(UNITS.values())
    argv = [journalctl, "--no-pager", "-n", str(lines), *(arg for unit in units for arg in ("-u", unit))]
    if follow:
        argv.append("-f")
    os.execv(journalctl, argv)  # noqa: S606 - hand the terminal to journalctl (Ctrl-C, paging)
