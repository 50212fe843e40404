"""Slurm-style hostlists: ``node[01-04]``, ``10.1.0.[11-14]``, ``a,b c``.

Wraps python-hostlist, adding what Slurm users expect (whitespace as a separator), a size cap, and validation
of every expanded name as a hostname or IPv4 address, so nothing odd reaches a template or a shell.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

import hostlist as _hostlist

from ober.errors import ConfigError

# Far above any real fleet, far below what would hurt memory or SSH fan-out.
MAX_HOSTS = 4096

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\Z")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+\Z")


def is_ipv4(text: str) -> bool:
    """Tell whether ``text`` is a dotted-quad IPv4 address."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: str) -> bool:
    """Tell whether ``text`` is a valid DNS hostname (RFC 1123), and not a malformed IPv4 address."""
    if len(text) > 253 or not _HOSTNAME.match(text):
        return False
    # "10.1.0.300" matches the hostname pattern but is a typo for an address, not a name.
    return not _DOTTED_NUMBERS.match(text)


def check_host(name: str, where: str) -> str:
    """Return ``name`` if it is a hostname or IPv4 address, else raise a ConfigError naming ``where``."""
    if is_ipv4(name) or is_hostname(name):
        return name
    raise ConfigError(
        f"{where}: {name!r} is neither a hostname nor an IPv4 address",
        "use letters, digits, '-' and '.' only, e.g. node01 or 198.51.100.11",
    )


def expand(
    text: str | Iterable[str], where: str = "hostlist", *, max_hosts: int = MAX_HOSTS, check: bool = True
) -> list[str]:
    """Expand a hostlist into names, in order, without duplicates.

    Args:
        text: a hostlist such as ``node[01-04]`` or ``node01 node02,node05``, or a list of them.
        where: the field or option the hostlist came from, for error messages.
        max_hosts: refuse lists longer than this.
        check: validate each name as a hostname or IPv4 address (off for ``host:port`` entries, which the
            caller checks after splitting).

    Returns:
        The expanded names; every one is a hostname or an IPv4 address.

    Raises:
        ConfigError: on a malformed hostlist, an invalid name, a duplicate, or too many hosts.
    """
    parts = [text] if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ConfigError(f"{where}: expected a hostlist string, got {type(part).__name__}")
        for word in split_words(part, where):
            try:
                names.extend(_hostlist.expand_hostlist(word))
            except RecursionError:
                raise ConfigError(f"{where}: bad hostlist {word!r}", "write ranges like node[01-04]") from None
            except _hostlist.BadHostlist as exc:
                raise ConfigError(
                    f"{where}: bad hostlist {word!r}: {exc}",
                    "write ranges like node[01-04] or 10.1.0.[11-14], separated by commas or spaces",
                ) from None
            if len(names) > max_hosts:
                raise ConfigError(
                    f"{where}: hostlist expands to more than {max_hosts} hosts",
                    "split it or narrow the ranges",
                )
    seen: set[str] = set()
    for name in names:
        if check:
            check_host(name, where)
        if name in seen:
            raise ConfigError(f"{where}: {name!r} is listed twice", "list each host once")
        seen.add(name)
    return names


def split_words(text: str, where: str) -> list[str]:
    """Split a hostlist on the commas and whitespace that are not inside ``[...]``."""
    words: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth < 0:
            break
        if depth > 0 and char.isspace():
            # python-hostlist recurses forever on a newline inside brackets; Slurm allows no space there either.
            raise ConfigError(f"{where}: bad hostlist {text!r}: space inside brackets", "write ranges like node[01-04]")
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                words.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise ConfigError(
            f"{where}: bad hostlist {text!r}: unbalanced brackets",
            "close every '[' with ']', e.g. node[01-04]",
        )
    if current:
        words.append(current)
    return words


def collect(names: Iterable[str]) -> str:
    """Fold names back into the shortest hostlist (``node[01-04]``)."""
    return str(_hostlist.collect_hostlist(list(names)))
