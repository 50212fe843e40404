"""Tests for ober.secrets: the mode-600 secrets file whose values never appear in an error."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ober.errors import SecretsError
from ober.secrets import load_secrets, pick, secrets_path, write_secrets

TOKEN = "S3CR3T-TOKEN"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never let a test see the real ~/.ober or $OBER_SECRETS."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OBER_SECRETS", raising=False)
    return home


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def make(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- loading ----------------------------------------------------------------------------------------------------


def test_mode_600_file_loads(tmp_path: Path) -> None:
    file = make(tmp_path / "login", f"bgp_md5: {TOKEN}\nstats_password: pw-123\n")
    assert load_secrets(file) == {"bgp_md5": TOKEN, "stats_password": "pw-123"}


@pytest.mark.parametrize("mode", [0o400, 0o700])
def test_owner_only_modes_load(tmp_path: Path, mode: int) -> None:
    file = make(tmp_path / "login", "bgp_md5: x\n", mode)
    assert load_secrets(file) == {"bgp_md5": "x"}


def test_accepts_str_path(tmp_path: Path) -> None:
    file = make(tmp_path / "login", "bgp_md5: x\n")
    assert load_secrets(str(file)) == {"bgp_md5": "x"}


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o620, 0o602, 0o610, 0o601, 0o666])
def test_group_or_world_accessible_file_is_refused(tmp_path: Path, mode: int) -> None:
    file = make(tmp_path / "login", f"bgp_md5: {TOKEN}\n", mode)
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: secrets file is readable by others (mode {mode:03o})"
    assert f"chmod 600 {file}" in str(info.value)
    assert TOKEN not in str(info.value)


def test_unsafe_mode_is_refused_even_when_not_required(tmp_path: Path) -> None:
    file = make(tmp_path / "login", "bgp_md5: x\n", 0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_secrets(file, required=False)


def test_missing_file_required(tmp_path: Path) -> None:
    file = tmp_path / "nope"
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: no such secrets file"
    assert info.value.fix is not None
    assert "install -m 600" in info.value.fix


def test_missing_file_not_required(tmp_path: Path) -> None:
    assert load_secrets(tmp_path / "nope", required=False) == {}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "null\n"])
def test_empty_file_has_no_secrets(tmp_path: Path, text: str) -> None:
    assert load_secrets(make(tmp_path / "login", text)) == {}


def test_directory_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(SecretsError, match=r"cannot read"):
        load_secrets(folder)


def test_non_utf8_file(tmp_path: Path) -> None:
    file = tmp_path / "login"
    file.write_bytes(b"bgp_md5: \xff" + TOKEN.encode())
    file.chmod(0o600)
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message.startswith(f"{file}: cannot read")
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f'bgp_md5: "{TOKEN}\n', 2),  # unterminated quote
        (f"bgp_md5: {TOKEN}: x\n", 1),  # mapping values not allowed here
        (f"a: 1\nbgp_md5: [{TOKEN}\n", 3),  # unclosed flow sequence
        (f"\tbgp_md5: {TOKEN}\n", 1),  # a tab cannot start a token
        (f"bgp_md5: x\n- {TOKEN}\n", 2),  # a list item inside a mapping
        (f"bgp_md5: x\n{TOKEN}\n", 3),  # a line without 'name:'
        (f"bgp_md5: x\n  y: {TOKEN}\n", 2),
        (f"bgp_md5: '{TOKEN}' {TOKEN}\n", 1),
    ],
)
def test_malformed_yaml_does_not_echo_secrets(tmp_path: Path, text: str, line: int) -> None:
    file = make(tmp_path / "login", text)
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}:{line}: YAML syntax error in the secrets file"
    assert "S3CR3T" not in str(info.value)
    assert "S3CR3T" not in repr(info.value)
    # Nothing chained either: a traceback under -v must not show the YAML error's text.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    ("text", "kind"), [(f"{TOKEN}\n", "a string"), (f"- {TOKEN}\n", "a list"), ("5\n", "a number")]
)
def test_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    file = make(tmp_path / "login", text)
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: expected 'name: value' lines, got {kind}"
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        f"{TOKEN} more",
        f"{TOKEN}'x",
        f'{TOKEN}"x',
        f"{TOKEN}$HOME",
        f"{TOKEN}\nx",
        f"{TOKEN}\\x",
        f"{TOKEN}#x",
        f"{TOKEN};x",
        f"{TOKEN}\tx",
        f"{TOKEN}`id`",
        f" {TOKEN}",
        TOKEN + "x" * (81 - len(TOKEN)),  # 81 characters
        f"{TOKEN}\u00e9",
        f"{TOKEN}\x00",
        "",
    ],
)
def test_bad_values_are_refused_without_echo(tmp_path: Path, value: str) -> None:
    file = make(tmp_path / "login", yaml.safe_dump({"bgp_md5": value}))
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: the value of 'bgp_md5' is not allowed"
    assert info.value.fix is not None
    assert "S3CR3T" not in str(info.value)


@pytest.mark.parametrize("value", [12345678, 1.5, True, None, [TOKEN], {"nested": TOKEN}])
def test_non_string_values_are_refused_without_echo(tmp_path: Path, value: object) -> None:
    file = make(tmp_path / "login", yaml.safe_dump({"bgp_md5": value}))
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: the value of 'bgp_md5' is not a string"
    assert info.value.fix is not None and "quote it" in info.value.fix
    assert "S3CR3T" not in str(info.value)
    assert "12345678" not in str(info.value)


@pytest.mark.parametrize("text", [f"bgp_md5: |\n  {TOKEN}\n", f'bgp_md5: "{TOKEN}\\n"\n'])
def test_value_with_trailing_newline_is_refused(tmp_path: Path, text: str) -> None:
    # A '|' block keeps the final newline; a '$' anchor would let it through into ExaBGP's config.
    file = make(tmp_path / "login", text)
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: the value of 'bgp_md5' is not allowed"
    assert "S3CR3T" not in str(info.value)


def test_folded_block_value_without_final_newline_loads(tmp_path: Path) -> None:
    file = make(tmp_path / "login", f"bgp_md5: >-\n  {TOKEN}\n")
    assert load_secrets(file) == {"bgp_md5": TOKEN}


def test_huge_number_is_refused_without_echo(tmp_path: Path) -> None:
    file = make(tmp_path / "login", f"bgp_md5: 1{'0' * 5000}\nother: {TOKEN}\n")
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: cannot read: ValueError"
    assert "S3CR3T" not in str(info.value)
    assert "00000" not in str(info.value)


def test_longest_allowed_value(tmp_path: Path) -> None:
    value = "x" * 80
    assert load_secrets(make(tmp_path / "login", f"bgp_md5: {value}\n")) == {"bgp_md5": value}


@pytest.mark.parametrize("name", ["Bad Name", "1abc", "BGP", "a" * 33, "a.b", 5, "with space"])
def test_bad_secret_names(tmp_path: Path, name: object) -> None:
    file = make(tmp_path / "login", yaml.safe_dump({name: TOKEN}))
    with pytest.raises(SecretsError) as info:
        load_secrets(file)
    assert info.value.message == f"{file}: a secret name is not allowed"
    assert info.value.fix is not None and info.value.fix.startswith("use names like bgp_md5")
    assert TOKEN not in str(info.value)
    # A value pasted where a name belongs must not be echoed either.
    assert str(name) not in info.value.message.removeprefix(str(file))


# --- pick -------------------------------------------------------------------------------------------------------


def test_pick_returns_only_the_named_secrets() -> None:
    secrets = {"bgp_md5": TOKEN, "stats_password": "pw", "other": "o"}
    refs = {"stats.auth.password_secret": "stats_password", "bgp.md5_secret": "bgp_md5"}
    assert pick(secrets, refs) == {"stats_password": "pw", "bgp_md5": TOKEN}
    assert pick(secrets, {}) == {}


def test_pick_names_the_field_of_a_missing_secret_never_the_name_it_gives() -> None:
    # The name in the config may be a password pasted in the wrong place: only the field is named.
    pasted = "correcthorsebatterystaple"
    with pytest.raises(SecretsError) as info:
        pick({"bgp_md5": TOKEN}, {"bgp.md5_secret": "bgp_md5", "stats.auth.password_secret": pasted})
    assert info.value.message == "stats.auth.password_secret: the secret it names is not in the secrets file"
    assert info.value.fix is not None and "the names it has: bgp_md5" in info.value.fix
    assert pasted not in str(info.value) and TOKEN not in str(info.value)


def test_pick_names_the_source() -> None:
    with pytest.raises(SecretsError, match=r"not in /etc/x/login") as info:
        pick({}, {"bgp.md5_secret": "bgp_md5"}, "/etc/x/login")
    assert info.value.fix is not None
    assert "/etc/x/login" in info.value.fix


# --- write_secrets ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
def test_write_secrets_mode_600_and_round_trip(tmp_path: Path) -> None:
    file = tmp_path / "ober" / "login"
    secrets = {"bgp_md5": TOKEN, "stats_password": "pw-123"}
    write_secrets(file, secrets)
    assert mode_of(file) == 0o600
    assert mode_of(file.parent) == 0o700
    assert load_secrets(file) == secrets
    assert sorted(p.name for p in file.parent.iterdir()) == ["login"]  # no temp file left behind


def test_write_secrets_mode_600_under_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secrets(tmp_path / "login", {"bgp_md5": "x"})
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "login") == 0o600


# Allowed values that YAML would misread if written unquoted: write_secrets must quote them.
TRICKY_VALUES = [
    *("a:b", "[x]", "{y}", "-lead", "*star", "&amp", "!bang", "%pct", "@at", "|pipe", ">gt", "?q", "~"),
    *("123", "true", "null", "0x1F", "1e3", "a,b", "x" * 80, "!%&()*+,-./:<=>?@[]^_{|}~"),
]


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_write_then_load_keeps_tricky_allowed_values(tmp_path: Path, value: str) -> None:
    file = tmp_path / "login"
    write_secrets(file, {"bgp_md5": value})
    assert load_secrets(file) == {"bgp_md5": value}


def test_write_secrets_replaces_a_world_readable_file(tmp_path: Path) -> None:
    file = make(tmp_path / "login", "old: " + "x" * 70 + "\n", 0o644)
    write_secrets(file, {"bgp_md5": "new"})
    assert mode_of(file) == 0o600
    assert load_secrets(file) == {"bgp_md5": "new"}


def test_write_secrets_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = make(tmp_path / "login", f"bgp_md5: {TOKEN}\n")

    def broken_dump(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", broken_dump)  # the module ober.secrets writes with
    with pytest.raises(OSError, match="disk full"):
        write_secrets(file, {"bgp_md5": "new"})
    monkeypatch.undo()
    # The old file is untouched: a failed write never leaves a half-written secrets file in place.
    assert load_secrets(file) == {"bgp_md5": TOKEN}


def test_write_secrets_ignores_a_stale_world_readable_temp_file(tmp_path: Path) -> None:
    file = tmp_path / "login"
    # A crash between creating the temp file and renaming it leaves it behind, perhaps with a wider mode.
    make(tmp_path / ".login.tmp", "leftover\n", 0o644)
    write_secrets(file, {"bgp_md5": TOKEN})
    assert mode_of(file) == 0o600
    assert load_secrets(file) == {"bgp_md5": TOKEN}
    assert not (tmp_path / ".login.tmp").exists()


# --- secrets_path -----------------------------------------------------------------------------------------------


def test_secrets_path_default_is_under_home(home: Path) -> None:
    assert secrets_path() == home / ".ober" / "login"


def test_secrets_path_env_beats_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBER_SECRETS", str(tmp_path / "env-login"))
    assert secrets_path() == tmp_path / "env-login"


def test_secrets_path_explicit_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBER_SECRETS", str(tmp_path / "env-login"))
    assert secrets_path(tmp_path / "explicit") == tmp_path / "explicit"
    assert secrets_path(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_secrets_path_expands_tilde(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert secrets_path("~/x/login") == home / "x" / "login"
    monkeypatch.setenv("OBER_SECRETS", "~/env/login")
    assert secrets_path() == home / "env" / "login"


def test_secrets_path_empty_env_falls_back_to_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBER_SECRETS", "")
    assert secrets_path() == home / ".ober" / "login"


def test_load_secrets_default_reads_home(home: Path) -> None:
    write_secrets(home / ".ober" / "login", {"bgp_md5": "from-home"})
    assert load_secrets() == {"bgp_md5": "from-home"}


def test_load_secrets_default_reads_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = make(tmp_path / "env-login", "bgp_md5: from-env\n")
    monkeypatch.setenv("OBER_SECRETS", str(file))
    assert load_secrets() == {"bgp_md5": "from-env"}


def test_load_secrets_default_missing_names_the_home_file(home: Path) -> None:
    with pytest.raises(SecretsError) as info:
        load_secrets()
    assert info.value.message == f"{home / '.ober' / 'login'}: no such secrets file"
    assert load_secrets(required=False) == {}
