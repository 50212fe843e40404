"""Strict, path-aware reading of YAML data into typed values.

Every error names the exact field (``vips[1].backend``) and, where it helps, the fix. Unknown keys are errors:
:meth:`Fields.done` refuses whatever a section did not read.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar

import yaml

from ober.errors import ConfigError
from ober.hostlists import check_host, expand, is_ipv4

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

# Identifiers that reach templates (group names, VIP names, secret names, node names): no quoting, spaces,
# braces or anything HAProxy, ExaBGP or systemd would read as syntax.
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
NAME_HINT = "start with a lowercase letter; then lowercase letters, digits, '-' or '_' (at most 32)"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def type_name(value: object) -> str:
    """A YAML-ish name for a value's type, for error messages."""
    if value is None:
        return "nothing (null)"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


class Fields:
    """One mapping being read, remembering which keys were read so leftovers can be refused.

    Args:
        data: the mapping (``None`` is read as empty, so an empty YAML section is allowed).
        path: where the mapping sits, for error messages (``""`` for the top level).
    """

    def __init__(self, data: object, path: str = "") -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'top level'}: expected a mapping (key: value), got {type_name(data)}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"{path or 'top level'}: key {key!r} is not a string")
        self._data: Mapping[str, Any] = data
        self._path = path
        self._read: set[str] = set()

    def at(self, key: str) -> str:
        """The path of ``key`` inside this mapping."""
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        """Tell whether ``key`` is present (and not null)."""
        return self._data.get(key) is not None

    def raw(self, key: str, default: object = MISSING) -> Any:
        """The value at ``key`` as it is, or ``default``; a missing required key is an error."""
        self._read.add(key)
        value = self._data.get(key)
        if value is None:
            if default is MISSING:
                raise ConfigError(f"{self.at(key)}: required", f"add '{key}:' under {self._path or 'the top level'}")
            return default
        return value

    def _typed(self, key: str, default: object, kinds: tuple[type, ...], what: str) -> Any:
        value = self.raw(key, default)
        if value is default:
            return value
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{self.at(key)}: expected {what}, got {type_name(value)}", f"set '{key}' to {what}")
        return value

    def string(
        self,
        key: str,
        default: str | _Missing = MISSING,
        *,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        secret: bool = False,
    ) -> str:
        """A string, optionally matching ``pattern``.

        With ``secret`` the value is never quoted in an error: the key names a secret, and a secret pasted there
        instead of its name would be shown (in a terminal, a CI log, a ``--json`` document).
        """
        value: str = self._typed(key, default, (str,), "a string")
        if pattern is not None and not pattern.match(value):
            shown = "the value" if secret else repr(value)
            raise ConfigError(f"{self.at(key)}: {shown} is not allowed", hint or f"match {pattern.pattern}")
        return value

    def name(self, key: str, default: str | _Missing = MISSING) -> str:
        """An identifier safe to put in a template (see :data:`NAME`)."""
        return self.string(key, default, pattern=NAME, hint=NAME_HINT)

    def integer(
        self, key: str, default: int | _Missing = MISSING, *, low: int | None = None, high: int | None = None
    ) -> int:
        """An integer within ``[low, high]``."""
        value: int = self._typed(key, default, (int,), "a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            shown = str(value) if abs(value) < 10**18 else "a huge number"
            raise ConfigError(f"{self.at(key)}: {shown} is out of range", f"use a number {bounds}")
        return value

    def boolean(self, key: str, default: bool | _Missing = MISSING) -> bool:
        """A boolean (YAML true/false)."""
        value: bool = self._typed(key, default, (bool,), "true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | _Missing = MISSING) -> str:
        """One of ``choices``."""
        value = self.string(key, default)
        if value not in choices:
            raise ConfigError(f"{self.at(key)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def duration(
        self, key: str, default: float | _Missing = MISSING, *, low: float = 0.0, high: float | None = None
    ) -> float:
        """A duration in seconds: a number, or a string like ``500ms``, ``30s``, ``10m``, ``2h``, ``7d``."""
        value = self.raw(key, default)
        if value is default:
            return float(value)  # type: ignore[arg-type]
        seconds = parse_duration(value, self.at(key))
        if seconds < low or (high is not None and seconds > high):
            bounds = f"between {low:g}s and {high:g}s" if high is not None else f"at least {low:g}s"
            raise ConfigError(f"{self.at(key)}: {value!r} is out of range", f"use a duration {bounds}")
        return seconds

    def ipv4(
        self, key: str, default: str | _Missing = MISSING, *, unicast: bool = False, local_ok: bool = False
    ) -> str:
        """A single IPv4 address (not a network); with ``unicast``, one that may be announced (see `special`)."""
        value = self.string(key, default)
        if not is_ipv4(value):
            raise ConfigError(f"{self.at(key)}: {value!r} is not an IPv4 address", "write it like 198.51.100.10")
        address = str(ipaddress.IPv4Address(value))
        if unicast:
            refuse_special(address, self.at(key), local_ok=local_ok)
        return address

    def hosts(self, key: str, default: list[str] | _Missing = MISSING, *, ipv4_only: bool = False) -> list[str]:
        """A hostlist (string or list of strings), expanded and validated."""
        value = self.raw(key, default)
        if value is default and isinstance(default, list):
            return list(default)
        if not isinstance(value, (str, list)):
            raise ConfigError(f"{self.at(key)}: expected a hostlist or a list, got {type_name(value)}")
        names = expand(value, self.at(key))
        if ipv4_only:
            for name in names:
                if not is_ipv4(name):
                    raise ConfigError(f"{self.at(key)}: {name!r} is not an IPv4 address", "give addresses, not names")
                refuse_special(name, self.at(key), local_ok=True)
        return names

    def section(self, key: str) -> Fields:
        """A nested mapping (absent is read as empty)."""
        return Fields(self.raw(key, {}), self.at(key))

    def listed(self, key: str, default: list[Any] | _Missing = MISSING) -> list[Any]:
        """A list, as it is."""
        value: list[Any] = self._typed(key, default, (list,), "a list")
        return value

    def sections(self, key: str, default: list[Any] | _Missing = MISSING) -> Iterator[Fields]:
        """Each mapping in a list of mappings, with its index in the path (``vips[1]``)."""
        for index, item in enumerate(self.listed(key, default)):
            yield Fields(item, f"{self.at(key)}[{index}]")

    def named_sections(self, key: str, *, hostnames: bool = False) -> Iterator[tuple[str, Fields]]:
        """Each ``name: mapping`` entry of a mapping; names are checked as identifiers (or as hostnames)."""
        outer = self.section(key)
        for name in outer.names():
            outer._read.add(name)
            if hostnames:
                check_host(name, outer.at(name))
            elif not NAME.match(name):
                raise ConfigError(f"{outer.at(name)}: name {name!r} is not allowed", NAME_HINT)
            yield name, Fields(outer._data[name], outer.at(name))

    def names(self) -> list[str]:
        """The keys present."""
        return list(self._data)

    def done(self) -> None:
        """Refuse keys that were never read: a typo must not be silently ignored."""
        unknown = [key for key in self._data if key not in self._read]
        if unknown:
            known = sorted(self._read)
            raise ConfigError(
                f"{self.at(unknown[0])}: unknown key",
                f"remove it or use one of: {', '.join(known)}" if known else "remove it",
            )


# Addresses no node may announce, own or peer from, with why: a VIP 0.0.0.0/32 or 224.0.0.1/32 would be accepted
# by a router without a filter and black-hole or hijack what it stands for.
_SPECIAL = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "is 'this network' (0.0.0.0/8), not a host address"),
    (ipaddress.IPv4Network("127.0.0.0/8"), "is a loopback address"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "is link-local"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "is a multicast address"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "is reserved (240.0.0.0/4) or the broadcast address"),
)


_LOCAL = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("169.254.0.0/16"))


def special(address: str, *, local_ok: bool = False) -> str | None:
    """Why ``address`` cannot be a unicast address to announce (a VIP), or None.

    With ``local_ok``, loopback and link-local pass: a BGP session may run over them (and tests peer on loopback),
    but they are never routed beyond the link, so never a VIP.
    """
    ip = ipaddress.IPv4Address(address)
    for network, why in _SPECIAL:
        if ip in network and not (local_ok and network in _LOCAL):
            return why
    return None


def refuse_special(address: str, where: str, *, local_ok: bool = False) -> None:
    """Raise a ConfigError naming ``where`` when ``address`` is not a unicast address (see :func:`special`)."""
    why = special(address, local_ok=local_ok)
    if why is not None:
        raise ConfigError(f"{where}: {address} {why}", "use a unicast address of your network")


def parse_duration(value: object, where: str) -> float:
    """Parse ``30``, ``30s``, ``500ms``, ``10m``, ``2h`` or ``7d`` into seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a duration like 30s or 10m, got {type_name(value)}")
    if isinstance(value, int) and abs(value) > 10**12:
        raise ConfigError(f"{where}: a huge number is not a duration", "write it like 500ms, 30s, 10m, 2h or 7d")
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ConfigError(f"{where}: {value!r} is not a duration", "write it like 500ms, 30s, 10m, 2h or 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def load_yaml(text: str) -> Any:
    """Parse YAML safely, refusing a key that a mapping repeats.

    PyYAML keeps the last of two equal keys without a word (``min_available: 3`` then ``min_available: 1`` reads
    as 1); here that is an error naming the key's path and both lines.

    Raises:
        ConfigError: a repeated key (``line L, column C: duplicate key fleet.min_available (first on line N)``).
        yaml.YAMLError: the text is not YAML (the caller names the file and position).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: that node was checked where it was defined
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        # By tag and text: `1` (a number) and `"1"` (a string) are different keys.
        first: dict[tuple[str, str], yaml.Node] = {}
        for key_node, value_node in node.value:
            key = (key_node.tag, str(key_node.value)) if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key[1]}" if path and key else (key[1] if key else path)
            if key is not None and key in first:
                mark, earlier = key_node.start_mark, first[key].start_mark
                raise ConfigError(
                    f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {where} "
                    f"(first on line {earlier.line + 1})",
                    "keep one of them: YAML would silently use the last",
                )
            if key is not None:
                first[key] = key_node
            _refuse_duplicate_keys(value_node, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{index}]", seen)


def each(items: list[T], check: Callable[[T, str], None], path: str) -> None:
    """Run ``check(item, "path[i]")`` over a list."""
    for index, item in enumerate(items):
        check(item, f"{path}[{index}]")
