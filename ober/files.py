"""Writing rendered trees to disk: all or nothing, never a half-written file or directory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ober.errors import OberError
from ober.render import Rendered

MARKER = ".ober-render"


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OberError(f"{out}: exists and is not a directory", "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OberError(
            f"{out}: directory is not empty and was not written by ober render",
            "choose an empty or new --out directory",
        )


def write_tree(out: Path, trees: Iterable[tuple[str, Rendered]]) -> list[Path]:
    """Write rendered files under ``out`` (each tree under its sub-directory), replacing a previous render whole.

    The files are written to a temporary sibling directory first and swapped in by rename, so ``out`` is either
    the old render or the new one, never a mix. Modes are kept (0600 for files with secrets).

    Returns:
        The paths written.
    """
    out = out.absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    written: list[Path] = []
    try:
        for sub, rendered in trees:
            for item in rendered.files:
                target = staging / sub / item.path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(item.content, encoding="utf-8")
                target.chmod(item.mode)
                written.append(out / sub / item.path.lstrip("/"))
        (staging / MARKER).write_text("written by ober render; replaced whole on the next render\n")
        staging.chmod(0o755)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written
