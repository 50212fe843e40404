"""``ober config``: change this node's configuration, check it, show or apply the difference, roll back on failure."""

from __future__ import annotations

from pathlib import Path

import click

from ober.apply import diff
from ober.cli.options import config_option, no_check_option, secrets_option
from ober.cli.output import Output, json_option
from ober.configure import Outcome, configure, current_data, edited
from ober.errors import OberError

root_option = click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Apply under this directory instead of / (staging; no services are reloaded).",
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show the unified diff of every file that would change; change nothing."
)


def report(out: Output, outcome: Outcome) -> None:
    """Print what configuring did or would do."""
    if out.as_json:
        out.json(
            {
                "dry_run": outcome.dry_run,
                "changes": outcome.summary(),
                "actions": outcome.actions,
                "backup": str(outcome.backup) if outcome.backup else None,
            }
        )
        return
    if not outcome.changes:
        out.print("nothing to change: the node already has this configuration")
        return
    if outcome.dry_run:
        out.plain(diff(outcome.changes))
        out.print(f"{len(outcome.changes)} files would change (dry run: nothing written)")
        return
    for change in outcome.changes:
        out.print(f"{change.kind:>6} {change.path}")
    done = ", ".join(outcome.actions) or ("none (--root)" if not outcome.live else "none needed")
    out.print(f"[green]✓[/] applied {len(outcome.changes)} changes; backup in {outcome.backup}; services: {done}")


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
@click.option("--replace", is_flag=True, help="With --from: the file replaces the whole config (no merge).")
@dry_run_option
@root_option
@secrets_option
@no_check_option
@json_option
@click.pass_obj
def config_cmd(
    out: Output,
    config_path: Path,
    from_file: Path | None,
    assignments: tuple[str, ...],
    replace: bool,
    dry_run: bool,
    root: Path,
    secrets_path: Path | None,
    no_check: bool,
) -> None:
    """Change the node's ober.yaml non-interactively (--from, --set), render, check, apply with rollback."""
    if from_file is None and not assignments:
        raise OberError("nothing to change", "give --from FILE and/or --set KEY=VALUE")
    if replace and from_file is None:
        raise OberError("--replace needs --from FILE", "give the whole config with --from FILE --replace")
    data = edited(current_data(config_path, root), from_file, assignments, replace=replace)
    report(out, configure(data, root=root, secrets_path=secrets_path, check=not no_check, dry_run=dry_run))
