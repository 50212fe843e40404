"""Writing a file atomically: a reader sees the old content or the new, never half of it, and never a wrong mode.

The one way ober replaces a file on disk (rendered files, secrets, state and record files, known_hosts, the lab's
files): a temp file in the same directory (a rename does not cross filesystems), created mode 600 and given its
final mode and owner before a byte is written (a secret is never readable by others, not even for a moment), written
and fsync'd, renamed over the target, then the directory fsync'd so the rename survives a crash. A failed write
removes the temp file and leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path,
    data: str | bytes,
    mode: int,
    *,
    owner: tuple[int, int] | None = None,
    sync: bool = True,
) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), mode ``mode``, all or nothing.

    The directory must exist (callers choose its mode: a secret's directory is 700).

    Args:
        path: the file to write.
        data: its new content.
        mode: its permission bits, exactly (the umask does not narrow them).
        owner: ``(uid, gid)`` to give it, or None for the writer's own.
        sync: fsync the file and the directory (off for state files rewritten every second, where a crash may lose
            the last one: the next write replaces it anyway).

    Raises:
        OSError: the file could not be written; ``path`` is unchanged and no temp file is left.
    """
    content = data.encode() if isinstance(data, str) else data
    # mkstemp creates the file 600 whatever the umask; a crashed writer's temp never collides with this one.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".ober-new")
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            if owner is not None:
                os.fchown(out.fileno(), *owner)  # before the chmod: a chown may clear the set-id bits
            os.fchmod(out.fileno(), mode)
            out.write(content)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync:
        _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a filesystem that cannot fsync a directory has nothing to make so."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
