"""``ober config``: change this node's configuration, check it, show or apply the difference, roll back on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ober.apply import apply, diff, plan
from ober.build import build_node
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import parse_node_config, read_yaml
from ober.configure import edited
from ober.errors import OberError
from ober.secrets import load_secrets
from ober.services import reload_for, run_actions, verify_haproxy


@click.command("config")
@config_option
@click.option("--from", "from_file", type=click.Path(path_type=Path), help="Merge this YAML over the config.")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set one value, e.g. --set health.rise=3 (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Show the unified diff of every file that would change; change nothing.")
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Apply under this directory instead of / (staging; no services are reloaded).",
)
@click.option(
    "--secrets",
    "secrets_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Secrets file [default: $OBER_SECRETS or ~/.ober/login].",
)
@click.option("--no-check", is_flag=True, help="Skip haproxy -c and exabgp validate (not recommended).")
@json_option
@click.pass_obj
def config_cmd(
    out: Output,
    config_path: Path,
    from_file: Path | None,
    assignments: tuple[str, ...],
    dry_run: bool,
    root: Path,
    secrets_path: Path | None,
    no_check: bool,
) -> None:
    """Change the node's ober.yaml non-interactively (--from, --set), render, check, apply with rollback."""
    if from_file is None and not assignments:
        raise OberError("nothing to change", "give --from FILE and/or --set KEY=VALUE")
    on_disk = root / str(config_path).lstrip("/")
    current: dict[str, Any] = {}
    if on_disk.exists():
        loaded = read_yaml(on_disk)
        current = loaded if isinstance(loaded, dict) else {}
    data = edited(current, from_file, assignments)
    config = parse_node_config(data, "new config")
    secrets = load_secrets(secrets_path, required=bool(config.secret_names()))
    built = build_node(config, secrets, check=not no_check)
    changes = plan(built.rendered, root, config.install_path)
    summary = [{"path": c.path, "change": c.kind} for c in changes]
    if dry_run or not changes:
        if out.as_json:
            out.json({"dry_run": dry_run, "changes": summary})
        elif not changes:
            out.print("nothing to change: the node already has this configuration")
        else:
            out.plain(diff(changes))
            out.print(f"{len(changes)} files would change (dry run: nothing written)")
        return
    live = root.resolve() == Path("/")
    actions = reload_for(config, [c.path for c in changes]) if live else []

    def reload() -> None:
        run_actions(actions)

    def verify() -> None:
        if live and "reload ober-http" in actions:
            verify_haproxy(config)

    result = apply(
        changes, root, config.install_path, [f.path for f in built.rendered.files], reload=reload, verify=verify
    )
    if out.as_json:
        out.json({"dry_run": False, "changes": summary, "backup": str(result.backup), "actions": actions})
        return
    for change in changes:
        out.print(f"{change.kind:>6} {change.path}")
    done = ", ".join(actions) if actions else ("none (--root)" if not live else "none needed")
    out.print(f"[green]✓[/] applied {len(changes)} changes; backup in {result.backup}; services: {done}")
