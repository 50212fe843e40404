"""``ober config``: change this node's configuration, check it, show or apply the difference, roll back on failure.

With ``--from``/``--set`` it runs unattended; without them, on a terminal, it runs the wizard (:mod:`ober.wizard`)
with inquirer prompts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click
import inquirer
from inquirer.errors import ValidationError

from ober.apply import diff
from ober.cli.options import config_option, no_check_option, secrets_option
from ober.cli.output import Output, json_option
from ober.configure import Outcome, configure, current_data, edited
from ober.errors import OberError
from ober.wizard import Validator, Wizard, conclude, detect

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
                "degraded": outcome.degraded,
            }
        )
        return
    for problem in outcome.degraded:
        out.warn(f"degraded: {problem}")
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
    # No backup when every file it held was a secret file (those copies are removed once the apply worked).
    kept = f"backup in {outcome.backup}" if outcome.backup else "no backup kept (only secret files changed)"
    text = f"applied {len(outcome.changes)} changes; {kept}; services: {done}"
    if outcome.degraded:
        out.print(f"[yellow]![/] {text}; but HAProxy serves degraded (the warnings above)")
    else:
        out.print(f"[green]✓[/] {text}")


class InquirerAsker:
    """The wizard's questions as inquirer prompts; other output through the CLI's console."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def text(self, message: str, default: str, validate: Validator) -> str:
        """A text prompt, pre-filled with ``default``; an invalid answer shows the model's error and asks again."""

        def check(_answers: object, current: str) -> bool:
            error = validate(current)
            if error:
                raise ValidationError(current, reason=error)
            return True

        return str(_answered(inquirer.text(_literal(message), default=_literal(default), validate=check)))

    def confirm(self, message: str, default: bool) -> bool:
        """A yes/no prompt."""
        return bool(_answered(inquirer.confirm(_literal(message), default=default)))

    def choose(self, message: str, choices: Sequence[str], default: str) -> str:
        """A list to pick from with the arrow keys."""
        return str(_answered(inquirer.list_input(_literal(message), choices=list(choices), default=default)))

    def show(self, text: str) -> None:
        """Text as it is (check results, a diff)."""
        self.out.plain(text)


def _literal(text: str) -> str:
    # inquirer runs messages and defaults through str.format: a YAML summary's braces must stay braces.
    return text.replace("{", "{{").replace("}", "}}")


def _answered(answer: object) -> object:
    if answer is None:  # inquirer's answer to Ctrl-C / Ctrl-D on some prompts
        raise click.Abort
    return answer


def wizard(
    out: Output, config_path: Path, root: Path, secrets_path: Path | None, *, check: bool, dry_run: bool
) -> None:
    """The questions, the checks, the diff, and (if the user agrees) the apply."""
    if out.as_json or not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise OberError(
            "ober config asks its questions on a terminal, and this is not one",
            "give --from FILE and/or --set KEY=VALUE to configure without questions",
        )
    asker = InquirerAsker(out)
    data = Wizard(asker, current_data(config_path, root), detect()).run()
    outcome = conclude(asker, data, root=root, secrets_path=secrets_path, check=check, dry_run=dry_run)
    if outcome.changes and outcome.dry_run:
        out.print("not applied: nothing written" + ("" if dry_run else " (you said no)"))
    elif outcome.changes:
        report(out, outcome)


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
    """Change the node's ober.yaml: a wizard on a terminal, or --from/--set; render, check, apply with rollback."""
    if from_file is None and not assignments:
        wizard(out, config_path, root, secrets_path, check=not no_check, dry_run=dry_run)
        return
    if replace and from_file is None:
        raise click.UsageError("--replace needs --from FILE: give the whole config with --from FILE --replace")
    data = edited(current_data(config_path, root), from_file, assignments, replace=replace)
    report(out, configure(data, root=root, secrets_path=secrets_path, check=not no_check, dry_run=dry_run))
