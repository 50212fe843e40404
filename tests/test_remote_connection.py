"""The fleet controller's SSH transport against real OpenSSH servers (the node image's sshd, see ober.lab.sshd).

Host keys, ssh_config, sudo, timeouts, lost nodes, atomic uploads and bounded fan-out, each checked the way an
operator would notice it. The pool and known_hosts helpers also have fast tests that need no server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from ober.errors import OberError
from ober.inventory import load_inventory
from ober.lab.image import DEFAULT_IMAGE, ensure_image
from ober.lab.netns import Lab, add_address, add_veth, run
from ober.lab.nspawn import descendants
from ober.lab.sshd import SshdFarm, SshServer, freeze, proxy_command, thaw
from ober.remote import hostkeys
from ober.remote.connection import Connection, SshTarget, _ProxyCommand, connect, targets
from ober.remote.pool import Outcome, for_each
from ober.runner import Runner
from tests.conftest import REPO, require

lab = pytest.mark.lab
BLACKHOLE = "198.51.100.99"


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the keys a test names: an operator's ssh-agent must not log a test in."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(scope="module")
def farm() -> Iterator[SshdFarm]:
    """sshd servers from the node image, in a private overlay (skip without root, unshare or the image)."""
    require(os.geteuid() == 0, "the sshd lab needs root (chroot, overlay, namespaces)")
    require(shutil.which("unshare") is not None, "unshare (util-linux) is not installed")
    require(shutil.which("ssh-keygen") is not None, "no OpenSSH client (ssh-keygen)")
    require(shutil.which("debootstrap") is not None or (DEFAULT_IMAGE / ".ober-image").exists(), "no debootstrap")
    try:
        image = ensure_image()
    except OberError as exc:
        require(False, f"cannot build the Debian 13 image: {exc}")
        raise
    with Lab() as the_lab:
        yield SshdFarm(the_lab, image)


@pytest.fixture(scope="module")
def server(farm: SshdFarm) -> SshServer:
    """One server on a loopback address, port 22, shared by the tests that do not change it."""
    return farm.start()


def make_target(
    farm: SshdFarm,
    server: SshServer,
    where: Path,
    *,
    config: str | None = None,
    pin: bool = True,
    **changes: object,
) -> SshTarget:
    """A target for ``server`` logging in as root with the farm's key, its key pinned unless ``pin`` is False."""
    known = where / "known_hosts"
    known.write_text(server.known_hosts_line() if pin else "")
    ssh_config = where / "ssh_config"
    ssh_config.write_text(config or f"Host *\n  IdentityFile {farm.key}\n  IdentitiesOnly yes\n")
    target = SshTarget(
        name="node01",
        host=server.address,
        user="root",
        port=server.port,
        ssh_config=str(ssh_config),
        known_hosts=str(known),
        connect_timeout=5.0,
        command_timeout=30.0,
    )
    return dataclasses.replace(target, **changes)  # type: ignore[arg-type]


@lab
def test_known_host_runs_commands_as_root(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    with connect(make_target(farm, server, tmp_path)) as conn:
        assert conn.user == "root" and not conn.sudo
        assert "trixie" in conn.run(["cat", "/etc/os-release"]).stdout
        assert conn.run(["id", "-un"]).stdout == "root\n"
        # argv words are quoted, never split or expanded by the remote shell.
        assert conn.run(["echo", "a  b", "$HOME", ";", "*"]).stdout == "a  b $HOME ; *\n"
        assert conn.run(["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hi there"}).stdout == "hi there\n"
        assert conn.run(["cat"], stdin=b"fed in\n").stdout == "fed in\n"
        failed = conn.run(["sh", "-c", "echo oops >&2; exit 3"])
        assert (failed.returncode, failed.stderr) == (3, "oops\n")
        assert conn.run(["no-such-program"]).returncode == 127
        runner: Runner = conn  # what node facts and plans are written against
        assert runner.run(["true"], 5.0).ok
        with pytest.raises(OberError, match="timeout must be positive"):
            conn.run(["true"], timeout=0)


@lab
def test_a_hashed_known_hosts_entry_is_honoured(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    target = make_target(farm, server, tmp_path)
    # What ssh writes with HashKnownHosts yes (Debian's default).
    hashed = paramiko.HostKeys.hash_host(server.address)
    Path(target.known_hosts).write_text(f"{hashed} {server.host_key}\n")
    with connect(target) as conn:
        assert conn.run(["true"]).ok


@lab
def test_unknown_host_is_refused_unless_new_keys_are_accepted(
    farm: SshdFarm, server: SshServer, tmp_path: Path
) -> None:
    target = make_target(farm, server, tmp_path, pin=False)
    known = Path(target.known_hosts)
    known.unlink()
    with pytest.raises(OberError) as refused:
        connect(target)
    message = str(refused.value)
    assert "node01: unknown host key" in message and "SHA256:" in message
    assert "--accept-new-host-keys" in message and f"ssh-keyscan {server.address} >> {known}" in message
    assert not known.exists()

    with connect(dataclasses.replace(target, accept_new_host_keys=True)) as conn:
        assert conn.run(["true"]).ok
    assert known.read_text() == server.known_hosts_line()
    assert known.stat().st_mode & 0o777 == 0o600
    # Recorded: the next connection is verified against it without the opt-in.
    with connect(target) as conn:
        assert conn.run(["true"]).ok


@lab
def test_changed_host_key_is_refused_even_when_accepting_new_keys(farm: SshdFarm, tmp_path: Path) -> None:
    first = farm.start()
    target = make_target(farm, first, tmp_path, accept_new_host_keys=True)
    known = Path(target.known_hosts)
    known.write_text("# lab nodes\n" + first.known_hosts_line())
    with connect(target) as conn:
        assert conn.run(["true"]).ok
    # The node comes back with another key: reinstalled, or someone else answering at its address.
    second = farm.new_host_key(first)
    try:
        with pytest.raises(OberError) as refused:
            connect(target)
    finally:
        second.stop()
    message = str(refused.value)
    assert f"node01: HOST KEY CHANGED for {first.address}" in message
    assert f"{known} line 2" in message
    assert f"ssh-keygen -R '{first.address}' -f {known}" in message
    assert known.read_text() == "# lab nodes\n" + first.known_hosts_line()


@lab
def test_ssh_config_user_port_and_identity_file_are_honoured(farm: SshdFarm, tmp_path: Path) -> None:
    server = farm.start(port=2222)
    config = f"Host {server.address}\n  User ober\n  Port 2222\n  IdentityFile {farm.key}\n  IdentitiesOnly yes\n"
    target = make_target(farm, server, tmp_path, config=config, user=None, port=None)
    with connect(target) as conn:
        assert (conn.user, conn.sudo) == ("ober", True)
        # A non-root login runs everything through sudo: root, on behalf of ober.
        assert conn.run(["sh", "-c", 'id -un; echo "$SUDO_USER"']).stdout == "root\nober\n"
        conn.put(b"as root\n", "/root/written-by-ober", 0o600)
        owner = conn.run(["stat", "-c", "%U %a", "/root/written-by-ober"]).stdout
        assert owner == "root 600\n"

    # Another key than the one the server knows: authentication fails, with a one-line message.
    other = tmp_path / "other_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    (tmp_path / "ssh_config").write_text(config.replace(str(farm.key), str(other)))
    with pytest.raises(OberError, match=r"node01: ober@.*:2222: SSH authentication failed"):
        connect(target)

    # A user without password-less sudo: a clear error, not a silent exit 1.
    (tmp_path / "ssh_config").write_text(config.replace("User ober", "User plain"))
    with connect(target) as conn, pytest.raises(OberError, match="plain cannot run commands as root"):
        conn.run(["true"])
    server.stop()


@lab
def test_proxy_command_reaches_a_server_inside_a_namespace(farm: SshdFarm, tmp_path: Path) -> None:
    ns = farm.lab.netns("sshns")
    add_address(ns, "lo", "198.51.100.10/32")
    server = farm.start("198.51.100.10", ns=ns)
    config = (
        "Host 198.51.100.*\n"
        f"  ProxyCommand {proxy_command(ns)}\n"
        f"  IdentityFile {farm.key}\n"
        "  IdentitiesOnly yes\n"
        "  User root\n"
    )
    target = make_target(farm, server, tmp_path, config=config, user=None)
    with connect(target) as conn:
        assert conn.run(["cat", "/etc/debian_version"]).stdout.startswith("13")
    server.stop()


@lab
def test_proxy_jump_goes_through_a_verified_jump_host(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    behind = farm.start(port=2200)
    config = (
        f"Host {behind.address}\n  ProxyJump root@{server.address}\n"
        f"Host *\n  IdentityFile {farm.key}\n  IdentitiesOnly yes\n"
    )
    target = make_target(farm, behind, tmp_path, config=config)
    known = Path(target.known_hosts)
    known.write_text(behind.known_hosts_line() + server.known_hosts_line())
    with connect(target) as conn:
        assert conn.run(["true"]).ok
    # The jump host's key is checked like the node's: unknown is refused, naming the jump host.
    known.write_text(behind.known_hosts_line())
    with pytest.raises(OberError, match=rf"node01: unknown host key for {server.address} \(its ProxyJump host\)"):
        connect(target)
    behind.stop()


@lab
def test_a_proxy_command_that_fails_says_why(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    config = f"Host *\n  ProxyCommand ip netns exec ober-no-such-ns true\n  IdentityFile {farm.key}\n"
    target = make_target(farm, server, tmp_path, config=config)
    with pytest.raises(
        OberError, match=r"node01: .*: the ssh_config ProxyCommand exited with status \d+: .*ober-no-such"
    ):
        connect(target)


@lab
def test_an_ssh_agent_logs_in_when_no_key_file_is_named(
    farm: SshdFarm, server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(shutil.which("ssh-agent") is not None and shutil.which("ssh-add") is not None, "no ssh-agent")
    require(not list(Path("~/.ssh").expanduser().glob("id_*")), "this user has default keys, which would log in too")
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        assert _wait_for(socket_path.exists, 5.0)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        target = make_target(farm, server, tmp_path, config="Host *\n  User root\n", user=None)
        with pytest.raises(OberError, match="no SSH key to log in with"):
            connect(target)
        run(["env", f"SSH_AUTH_SOCK={socket_path}", "ssh-add", "-q", str(farm.key)])
        with connect(target) as conn:
            assert conn.run(["true"]).ok
    finally:
        agent.kill()
        agent.wait()


@lab
def test_a_command_past_its_timeout_is_killed_and_returns_124(
    farm: SshdFarm, server: SshServer, tmp_path: Path
) -> None:
    with connect(make_target(farm, server, tmp_path)) as conn:
        started = time.monotonic()
        result = conn.run(["sleep", "30"], timeout=1)
        elapsed = time.monotonic() - started
        assert result.returncode == 124 and "sleep 30 did not finish in 1s" in result.stderr
        assert elapsed < 2.5
        # Killed on the node too, not merely abandoned by the client.
        assert _wait_for(lambda: _sleeping(server) == 0, 3.0)
        assert conn.run(["true"]).ok


@lab
@pytest.mark.parametrize("during", ["command", "upload"])
def test_a_node_that_stops_answering_is_reported_lost(farm: SshdFarm, tmp_path: Path, during: str) -> None:
    server = farm.start()
    target = make_target(farm, server, tmp_path, connect_timeout=1.0)
    conn = connect(target)
    # Far more than the SSH window: the upload stalls once the node stops reading.
    data = os.urandom(256 * 2**20) if during == "upload" else b""
    frozen: list[int] = []

    def freeze_midway() -> None:
        # Once the command runs (for the upload: once its temp file exists on the node), the node hangs.
        if during == "upload":
            _wait_for(lambda: bool(list((farm.root / "root").glob(".frozen.bin.ober-*"))), 30.0)
        else:
            time.sleep(0.5)
        frozen_at.append(time.monotonic())
        frozen.extend(freeze(server))

    frozen_at: list[float] = []
    timer = threading.Thread(target=freeze_midway)
    timer.start()
    try:
        with pytest.raises(OberError, match=r"node01: lost the SSH connection .* no answer to keep-alives"):
            if during == "command":
                conn.run(["sleep", "60"], timeout=120)
            else:
                conn.put(data, "/root/frozen.bin", timeout=120)
        # Keep-alive probes after 1 s of silence (the connect timeout), lost after 3 unanswered: not after 120 s.
        assert time.monotonic() - frozen_at[0] < 7.0
    finally:
        timer.join()
        thaw(frozen)
        conn.close()
        server.stop()


@lab
def test_connecting_to_a_blackholed_address_fails_within_the_connect_timeout(farm: SshdFarm, tmp_path: Path) -> None:
    near, far = farm.lab.netns("bh-a"), farm.lab.netns("bh-b")
    add_veth(near, "bh0", far, "bh1")
    add_address(near, "bh0", "198.51.100.1/24")
    # A neighbour entry that nobody answers for: SYNs leave and vanish, as on a dead or firewalled host.
    run(["ip", "-n", near, "neigh", "add", BLACKHOLE, "lladdr", "02:00:00:00:00:99", "dev", "bh0", "nud", "permanent"])

    # Through a ProxyCommand (the lab fleet's way in).
    config = f"Host {BLACKHOLE}\n  ProxyCommand {proxy_command(near)}\n  IdentityFile {farm.key}\n"
    known = tmp_path / "known_hosts"
    known.write_text("")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(config)
    target = SshTarget("node09", BLACKHOLE, "root", 22, str(ssh_config), str(known), 2.0, 30.0)
    started = time.monotonic()
    with pytest.raises(OberError, match=r"node09: root@198.51.100.99:22: no SSH answer within 2s"):
        connect(target)
    assert time.monotonic() - started < 3.5

    # Directly (the client inside the namespace, as on a workstation whose route leads nowhere).
    ssh_config.write_text("")
    script = (
        "import time\n"
        "from ober.remote.connection import SshTarget, connect\n"
        f"t = SshTarget('node09', {BLACKHOLE!r}, 'root', 22, {str(ssh_config)!r}, {str(known)!r}, 2.0, 30.0)\n"
        "started = time.monotonic()\n"
        "try:\n    connect(t)\nexcept Exception as exc:\n    print(f'{time.monotonic() - started:.2f}', exc)\n"
    )
    done = run(["ip", "netns", "exec", near, sys.executable, "-c", script], timeout=20)
    elapsed, _, message = done.stdout.strip().partition(" ")
    assert "no SSH answer within 2s" in message
    assert float(elapsed) < 3.5


@lab
def test_put_is_atomic_and_a_secret_is_never_readable_by_others(
    farm: SshdFarm, server: SshServer, tmp_path: Path
) -> None:
    path = "/root/secret.bin"
    on_host = farm.root / path.lstrip("/")
    old, new = b"old secret\n", os.urandom(32 * 2**20)
    seen_sizes: set[int] = set()
    temp_modes: set[int] = set()
    with connect(make_target(farm, server, tmp_path)) as conn:
        conn.put(old, path, 0o600)
        done = threading.Event()

        def watch() -> None:
            # What another reader on the node sees while the upload runs.
            while not done.is_set():
                for entry in on_host.parent.glob(".secret.bin.ober-*"):
                    with contextlib.suppress(FileNotFoundError):
                        temp_modes.add(entry.stat().st_mode & 0o777)
                seen_sizes.add(on_host.stat().st_size)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            conn.put(new, path, 0o600)
        finally:
            done.set()
            watcher.join()
        assert seen_sizes <= {len(old), len(new)}
        assert temp_modes and temp_modes <= {0o600}
        assert on_host.stat().st_mode & 0o777 == 0o600
        assert hashlib.sha256(conn.get(path)).digest() == hashlib.sha256(new).digest()
        assert not list(on_host.parent.glob(".secret.bin.ober-*"))

        conn.put(b"public\n", "/etc/ober-lab-public", 0o644)
        assert (farm.root / "etc" / "ober-lab-public").stat().st_mode & 0o777 == 0o644

        with pytest.raises(OberError, match=r"node01: cannot read /no/such/file: .*No such file"):
            conn.get("/no/such/file")
        with pytest.raises(OberError, match="node01: cannot write /no/such/dir/f"):
            conn.put(b"x", "/no/such/dir/f")


@lab
def test_an_upload_cut_short_leaves_the_old_file_and_no_temp(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    path = "/root/cut.bin"
    on_host = farm.root / path.lstrip("/")
    with connect(make_target(farm, server, tmp_path)) as conn:
        conn.put(b"old\n", path, 0o600)
        with pytest.raises(OberError):
            conn.put(os.urandom(64 * 2**20), path, 0o600, timeout=0.2)
    assert on_host.read_bytes() == b"old\n"
    assert _wait_for(lambda: not list(on_host.parent.glob(".cut.bin.ober-*")), 5.0)


@lab
def test_refused_connection_is_one_clear_line(farm: SshdFarm, server: SshServer, tmp_path: Path) -> None:
    target = make_target(farm, server, tmp_path, port=2)
    with pytest.raises(OberError, match=rf"^node01: root@{server.address}:2: connection refused \(fix: "):
        connect(target)


@lab
def test_reconnect_reopens_a_dead_connection_with_the_same_host_key_checks(farm: SshdFarm, tmp_path: Path) -> None:
    server = farm.start()
    conn = connect(make_target(farm, server, tmp_path))
    try:
        # Every session of the server dies, its listener stays: what a node's reboot does to a connection.
        listener = descendants(server.process.pid)[0]
        for pid in descendants(listener):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert _wait_for(lambda: not _runs(conn), 10.0)
        with pytest.raises(OberError, match=r"node01: lost the SSH connection .* the connection is closed"):
            conn.run(["true"])
        conn.reconnect()
        assert conn.run(["hostname"]).ok  # the same object runs commands again
        # Down: one clear line, and the connection stays closed.
        server.stop()
        with pytest.raises(OberError, match=rf"^node01: root@{server.address}:22: connection refused"):
            conn.reconnect()
        with pytest.raises(OberError, match="the connection is closed"):
            conn.run(["true"])
        # Back with another host key: refused, as a first connect would be.
        farm.start(server.address)
        with pytest.raises(OberError, match="HOST KEY CHANGED"):
            conn.reconnect()
    finally:
        conn.close()


def _runs(conn: Connection) -> bool:
    try:
        return conn.run(["true"], 5.0).ok
    except OberError:
        return False


@lab
def test_for_each_bounds_concurrency_and_isolates_a_failing_node(
    farm: SshdFarm, server: SshServer, tmp_path: Path
) -> None:
    good = make_target(farm, server, tmp_path)
    items = [dataclasses.replace(good, name=f"node{i:02d}") for i in range(1, 8)]
    items[3] = dataclasses.replace(items[3], port=2)
    lock = threading.Lock()
    running, most = 0, 0

    def work(target: SshTarget) -> str:
        nonlocal running, most
        with connect(target) as conn:
            with lock:
                running += 1
                most = max(most, running)
            try:
                # Counted on the server too: sessions of this sshd running a sleep right now.
                return conn.run(["sleep", "0.6"]).stdout or target.name
            finally:
                with lock:
                    running -= 1

    done: list[Outcome[str]] = []
    sessions: list[int] = []
    stop = threading.Event()

    def count_server_side() -> None:
        while not stop.is_set():
            sessions.append(_sleeping(server))
            time.sleep(0.02)

    counter = threading.Thread(target=count_server_side)
    counter.start()
    try:
        outcomes = for_each(items, work, parallel=3, name=lambda t: t.name, on_done=done.append)
    finally:
        stop.set()
        counter.join()
    assert [outcome.name for outcome in outcomes] == [t.name for t in items]
    assert [outcome.ok for outcome in outcomes] == [True, True, True, False, True, True, True]
    error = outcomes[3].error or ""
    assert "node04" in error and "connection refused" in error and "\n" not in error
    assert len(done) == 7
    assert 2 <= most <= 3
    assert max(sessions) <= 3


def test_for_each_turns_any_exception_into_that_items_outcome() -> None:
    def work(item: int) -> int:
        if item == 2:
            raise ValueError("bad\nitem")
        if item == 3:
            raise OberError("node3: down", "start it")
        return item * 10

    outcomes = for_each([1, 2, 3, 4], work, parallel=2, name=lambda i: f"n{i}")
    assert [(o.name, o.value, o.error) for o in outcomes] == [
        ("n1", 10, None),
        ("n2", None, "ValueError: bad item"),
        ("n3", None, "node3: down (fix: start it)"),
        ("n4", 40, None),
    ]
    assert for_each([], work, parallel=3, name=str) == []
    with pytest.raises(OberError, match="parallel must be at least 1"):
        for_each([1], work, parallel=0, name=str)


def test_known_hosts_lines_are_found_hashed_or_plain_and_appended_safely(tmp_path: Path) -> None:
    key = paramiko.Ed25519Key.from_private_key_file(str(_keypair(tmp_path / "k")))
    known = tmp_path / "ssh" / "known_hosts"
    hashed = paramiko.HostKeys.hash_host("[198.51.100.7]:2222")
    other = paramiko.Ed25519Key.from_private_key_file(str(_keypair(tmp_path / "other")))
    known.parent.mkdir()
    known.write_text(f"# comment\n{hashed} ssh-ed25519 {key.get_base64()}\n198.51.100.8 ssh-ed25519 {key.get_base64()}")
    known.chmod(0o644)
    assert hostkeys.lines_for(known, "[198.51.100.7]:2222") == [2]
    assert hostkeys.lines_for(known, "198.51.100.8") == [3]
    assert hostkeys.lines_for(known, "198.51.100.9") == []

    names = [f"198.51.100.{i}" for i in range(20, 40)]
    threads = [threading.Thread(target=hostkeys.append, args=(known, name, other)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = hostkeys.load(known)
    assert all(loaded.lookup(name) for name in names) and loaded.lookup("198.51.100.8")
    assert known.stat().st_mode & 0o777 == 0o644
    assert known.read_text().count("\n") == 3 + len(names)


def test_targets_come_from_the_inventory_with_paths_relative_to_it(tmp_path: Path) -> None:
    source = (REPO / "inventory" / "example.yaml").read_text()
    inventory_file = tmp_path / "site.yaml"
    inventory_file.write_text(source.replace("  user: root", "  user: root\n  config: ssh/config", 1))
    inventory = load_inventory(inventory_file)
    nodes = inventory.select(None)[:2]
    made = targets(inventory, nodes, accept_new_host_keys=True)
    assert [t.name for t in made] == [n.name for n in nodes]
    assert [t.host for t in made] == [n.address for n in nodes]
    first = made[0]
    assert first.ssh_config == str(tmp_path / "ssh" / "config")
    assert first.known_hosts == str(Path("~/.ssh/known_hosts").expanduser())
    assert (first.user, first.connect_timeout, first.command_timeout) == ("root", 10.0, 600.0)
    assert first.accept_new_host_keys


def _keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _sleeping(server: SshServer) -> int:
    """How many ``sleep`` processes run under the server right now (its sessions' commands)."""
    count = 0
    for pid in server.pids():
        try:
            count += Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
        except OSError:
            continue
    return count


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_closing_a_proxy_command_that_already_ended_is_quiet() -> None:
    # paramiko's transport thread closes the ProxyCommand as it ends; a relay already gone and reaped made that
    # thread print a ProcessLookupError traceback on the user's terminal.
    plain = paramiko.ProxyCommand("true")
    plain.process.wait()
    with pytest.raises(ProcessLookupError):
        plain.close()
    ours = paramiko.ProxyCommand("true")
    ours.__class__ = _ProxyCommand
    ours.process.wait()
    ours.close()
