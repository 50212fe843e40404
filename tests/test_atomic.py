"""``write_atomic``: the one way ober replaces a file. Modes from the start, all or nothing, nothing left behind."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ober.atomic import write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_writes_text_and_bytes_with_the_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0o077):
        write_atomic(tmp_path / "haproxy.cfg", "global\n", 0o644)
    with umask(0o000):
        write_atomic(tmp_path / "login", b"bgp_md5: x\n", 0o600)
    assert (tmp_path / "haproxy.cfg").read_text() == "global\n"
    assert mode_of(tmp_path / "haproxy.cfg") == 0o644  # not narrowed to 600 by the umask
    assert (tmp_path / "login").read_bytes() == b"bgp_md5: x\n"
    assert mode_of(tmp_path / "login") == 0o600  # not widened by umask 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "login"]


def test_replacing_a_world_readable_file_with_a_secret_takes_the_new_mode(tmp_path: Path) -> None:
    target = tmp_path / "login"
    target.write_text("old\n")
    target.chmod(0o644)
    write_atomic(target, "bgp_md5: new\n", 0o600)
    assert mode_of(target) == 0o600
    assert target.read_text() == "bgp_md5: new\n"


def test_no_byte_is_written_before_the_file_has_its_final_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real_fchmod = os.fchmod

    def spy(fd: int, mode: int) -> None:
        # What a reader could see of the temp file just before it gets its mode: private and empty.
        info = os.fstat(fd)
        seen.append((stat.S_IMODE(info.st_mode), info.st_size))
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", spy)
    with umask(0o000):  # the widest a process could have: the temp file is still 600
        write_atomic(tmp_path / "login", "bgp_md5: secret\n", 0o600)
    assert seen == [(0o600, 0)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ober.yaml"
    target.write_text("old: config\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # a full disk cannot be made here without a mount
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new: config\n", 0o644)
    assert target.read_text() == "old: config\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ober.yaml"]


def test_a_target_that_cannot_be_replaced_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "health.json").mkdir()  # a directory where the file should be: the rename fails
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "health.json", "{}", 0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["health.json"]
    assert (tmp_path / "health.json").is_dir()


def test_a_missing_directory_is_an_error_not_a_guess(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "etc" / "ober.yaml", "x: 1\n", 0o644)
    assert not (tmp_path / "etc").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_owner_is_set_before_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "health.json"
    write_atomic(target, "{}", 0o640, owner=(65534, 65534))
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o640)


@pytest.mark.parametrize("sync", [True, False])
def test_a_reader_never_sees_half_a_file(tmp_path: Path, sync: bool) -> None:
    target = tmp_path / "state.json"
    contents = ["a" * 200_000, "b" * 300_000]
    write_atomic(target, contents[0], 0o644)
    stop = threading.Event()
    seen: set[str] = set()

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for turn in range(40):
            write_atomic(target, contents[turn % 2], 0o644, sync=sync)
    finally:
        stop.set()
        reader.join()
    assert seen <= set(contents)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
