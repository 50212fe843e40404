"""The secrets file (``~/.ober/login``): YAML ``name: value`` pairs, mode 600, never echoed anywhere.

Configs refer to secrets by name; values are read only when rendering the files that need them (ExaBGP's MD5
password, the stats password), and those files are written mode 600. No value ever appears in an error message.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import yaml

from ober.atomic import write_atomic
from ober.errors import ConfigError, SecretsError
from ober.schema import NAME, load_yaml, type_name

DEFAULT_SECRETS = Path("~/.ober/login")

# Values end up inside quoted strings in ExaBGP's config and a systemd EnvironmentFile: no quotes, backslashes,
# '$', ';', '#', whitespace or control characters, which would break out of them.
_VALUE = re.compile(r"^[A-Za-z0-9!%&()*+,\-./:<=>?@\[\]^_{|}~]{1,80}\Z")


def secrets_path(path: str | Path | None = None) -> Path:
    """The secrets file: ``path``, else ``$OBER_SECRETS``, else ``~/.ober/login``."""
    chosen = path or os.environ.get("OBER_SECRETS") or DEFAULT_SECRETS
    return Path(chosen).expanduser()


def load_secrets(path: str | Path | None = None, *, required: bool = True) -> dict[str, str]:
    """Read the secrets file, refusing one that others can read.

    Args:
        path: the file; see :func:`secrets_path` for the default.
        required: if false, a missing file reads as no secrets.

    Raises:
        SecretsError: the file is group/world-accessible, malformed, or holds a value that is not allowed.
    """
    file = secrets_path(path)
    try:
        info = file.stat()
    except FileNotFoundError:
        if required:
            raise SecretsError(
                f"{file}: no such secrets file", f"create it with mode 600: install -m 600 /dev/null {file}"
            ) from None
        return {}
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(
            f"{file}: secrets file is readable by others (mode {stat.S_IMODE(info.st_mode):03o})",
            f"run: chmod 600 {file}",
        )
    try:
        data = load_yaml(file.read_text(encoding="utf-8"))
    except ConfigError as exc:
        # A name given twice (the last would win silently, and the other value linger): names are not secret.
        raise SecretsError(f"{file}: {exc.message}", exc.fix) from None
    except (OSError, ValueError) as exc:
        # ValueError: undecodable bytes, or a number too large for Python; never quote the content.
        raise SecretsError(f"{file}: cannot read: {exc.__class__.__name__}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # Only the position: the YAML error's own text may quote a secret.
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        raise SecretsError(f"{where}: YAML syntax error in the secrets file", "fix the YAML at that line") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SecretsError(f"{file}: expected 'name: value' lines, got {type_name(data)}")
    secrets: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not NAME.match(name):
            # Not echoed: a value pasted where a name belongs would be shown.
            raise SecretsError(
                f"{file}: a secret name is not allowed", "use names like bgp_md5 (lowercase, digits, - _)"
            )
        if not isinstance(value, str):
            raise SecretsError(f"{file}: the value of {name!r} is not a string", f'quote it: {name}: "..."')
        if not _VALUE.match(value):
            raise SecretsError(
                f"{file}: the value of {name!r} is not allowed",
                "use 1-80 characters without quotes, spaces, '$', '#', ';' or backslashes",
            )
        secrets[name] = value
    return secrets


def pick(secrets: Mapping[str, str], refs: Mapping[str, str], source: str = "the secrets file") -> dict[str, str]:
    """The secrets a config refers to (``refs``: the referring field → the secret's name).

    A missing one is an error naming the *field* that refers to it, never the name it gives: a secret pasted
    where its name belongs would otherwise be printed.
    """
    for field, name in refs.items():
        if name not in secrets:
            raise missing_secret(field, secrets, source)
    return {name: secrets[name] for name in refs.values()}


def missing_secret(field: str, secrets: Mapping[str, str], source: str = "the secrets file") -> SecretsError:
    """The error for a secret that ``field`` names but ``source`` lacks (the field, and the names there are)."""
    have = f"; the names it has: {', '.join(sorted(secrets))}" if secrets else ""
    return SecretsError(
        f"{field}: the secret it names is not in {source}",
        f"add that name with its value to {source} (mode 600), or correct {field}{have}",
    )


def write_secrets(path: Path, secrets: Mapping[str, str]) -> None:
    """Write a secrets file atomically with mode 600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, yaml.safe_dump(dict(secrets)), 0o600)
    # Older versions wrote through this fixed name: one a crash left behind may hold a secret, perhaps readable.
    path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
