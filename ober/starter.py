"""``ober fleet init``: a commented starter inventory, or the example site, for an installed ober too.

Both ship inside ober's package (``templates/inventory/``); in a source tree the example is
``inventory/example.yaml``, the file tests and ``make example`` use.
"""

from __future__ import annotations

from pathlib import Path

from ober.atomic import write_atomic
from ober.errors import OberError
from ober.render import TEMPLATES_HINT, templates_dir

SITE_FILE = "site.yaml"


def starter_path(example: bool = False) -> Path:
    """The starter inventory (or, with ``example``, the example site) that ober ships.

    Raises:
        OberError: it is missing (a broken install).
    """
    templates = templates_dir()
    name = "example.yaml" if example else "starter.yaml"
    # Installed: both under the package's templates; in a source tree the example lives in inventory/.
    for candidate in (templates / "inventory" / name, templates.parent / "inventory" / name):
        if candidate.is_file():
            return candidate
    raise OberError(f"ober's {name} inventory is missing", TEMPLATES_HINT)


def write_starter(directory: Path, *, example: bool = False) -> Path:
    """Write the starter inventory as ``directory/site.yaml``; the path written.

    The directory is an inventory of its own (``-i DIR`` reads all its YAML files as one), so one that holds YAML
    already is refused rather than mixed with.

    Raises:
        OberError: ``directory`` is a file, or already holds an inventory.
    """
    if directory.exists() and not directory.is_dir():
        raise OberError(f"{directory} is a file, not a directory", "name a new directory, e.g. ober fleet init site1")
    present = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]) if directory.is_dir() else []
    if present:
        raise OberError(
            f"{directory} holds an inventory already ({', '.join(p.name for p in present)})",
            "edit it, or name a new directory: ober fleet init DIR",
        )
    target = directory / SITE_FILE
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(target, starter_path(example).read_text(encoding="utf-8"), 0o644)
    return target
