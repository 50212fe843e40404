"""The node's units under real systemd, in a systemd-nspawn node behind the lab's BIRD router, with real RGW.

ober is installed offline from the wheelhouse, configured with ``ober config --from`` on the node itself, and
the router's kernel route is the truth about what the node announces.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from ober.certs import write_pem
from ober.lab.labstate import inotify_instances
from ober.lab.netns import Lab, add_address, run_in
from ober.lab.nspawn import NspawnNode, boot_node, install_ober
from ober.lab.rgw import RgwCluster, missing_programs, start_cluster
from ober.lab.router import Router, start_router
from tests.test_lab_nspawn import nspawn_prerequisites, wheelhouse_for_nodes

pytestmark = pytest.mark.lab

VIP = "198.51.100.10"
NODE = "100.64.0.11"
RGW = ("100.64.1.11", "100.64.1.12")
OBER = "/opt/ober/venv/bin/ober"
MAINTENANCE = "/opt/ober/etc/maintenance"
EXABGP_CONF = "/opt/ober/etc/exabgp.conf"
HOLD_TIME = 3.0  # bgp.hold_time's default: a session ExaBGP stopped keeping alive would expire within it


@dataclass
class SystemdLab:
    lab: Lab
    router: Router
    node: NspawnNode
    rgw: RgwCluster
    announced_after: float = 0.0

    def hops(self) -> list[str]:
        return self.router.next_hops(VIP)

    def wait_hops(self, expected: list[str], timeout: float = 30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.hops() == expected:
                return time.monotonic() - started
            time.sleep(0.01)
        raise AssertionError(f"next-hops {self.hops()}, expected {expected}\n{self.journal()}")

    def journal(self, lines: int = 40) -> str:
        used, limit = inotify_instances()
        return (
            self.node.run(f"journalctl -u ober-http -u ober-bgp -n {lines} --no-pager", check=False).stdout
            + self.node.run("systemctl --failed --no-legend --no-pager", check=False).stdout
            # What is left in each unit's cgroup (a unit stuck "deactivating" waits for it).
            + self.node.run("systemctl status -n 0 --no-pager ober-http ober-bgp", check=False).stdout
            + self.node.run("journalctl -b --no-pager | grep -i inotify | tail -n 5", check=False).stdout
            + self.stuck()
            # Every container's systemd shares the host root's inotify instances: past the limit, units inside the
            # node fail with "Failed to allocate inotify fd" for reasons that have nothing to do with ober.
            + f"(inotify instances in use on this machine: {used} of {limit})"
        )

    def active(self, unit: str) -> str:
        return self.node.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    def stuck(self) -> str:
        """Say so when systemd missed a unit's cgroup-empty event: "deactivating" with no process left in it."""
        notes = []
        for unit in ("ober-http", "ober-bgp"):
            procs = f"cat /sys/fs/cgroup/system.slice/{unit}.service/cgroup.procs"
            if self.active(unit) == "deactivating" and not self.node.run(procs, check=False).stdout.strip():
                notes.append(
                    f"{unit} is deactivating with no process left: systemd missed its cgroup-empty event and waits "
                    "out TimeoutStopSec (seen here with KillMode=mixed after the main process died, not otherwise)\n"
                )
        return "".join(notes)

    def main_pid(self, unit: str) -> str:
        return self.node.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()

    def in_service(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until the node serves as after the fixture: both units active, no drain, announced."""
        deadline = time.monotonic() + timeout
        while True:
            units = [self.active("ober-http"), self.active("ober-bgp")]
            drained = self.node.run(f"test -e {MAINTENANCE}", check=False).returncode == 0
            if units == ["active", "active"] and not drained and self.hops() == [NODE]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the node is not in service: units {units}, maintenance file {drained}, "
                    f"next-hops {self.hops()}\n{self.journal()}"
                )
            time.sleep(0.2)

    def bird_session(self) -> str:
        """BIRD's line for the node's session: its state and since when (a re-established session has a new time)."""
        lines = self.router.birdc("show", "protocols").splitlines()
        names = [name for name, peer in self.router.peers.items() if peer == NODE]
        return next(line for line in lines if line.split()[:1] == names)


class RoutePoll:
    """The router's kernel route for the VIP, read every 10 ms in a thread while a block runs."""

    def __init__(self, lab: SystemdLab) -> None:
        self.lab = lab
        self.samples: list[tuple[float, list[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), self.lab.hops()))
            time.sleep(0.01)

    def __enter__(self) -> RoutePoll:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def lost(self) -> list[tuple[float, list[str]]]:
        """The samples in which the node was not the route's only next-hop."""
        return [sample for sample in self.samples if sample[1] != [NODE]]

    def widest_gap(self) -> float:
        """The longest time between two samples (what the poll could have missed)."""
        times = [at for at, _ in self.samples]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def config_data() -> dict[str, Any]:
    return {
        "name": "n1",
        "bgp": {"router_id": NODE, "neighbors": "100.64.0.1"},
        "vips": [{"name": "s3-a", "address": VIP, "backend": "ceph-a"}],
        "backends": {"ceph-a": {"servers": list(RGW), "check": {"interval": "500ms", "rise": 1, "fall": 2}}},
        "certificates": {"pem": "/opt/ober/etc/certs/s3.pem", "http": "redirect"},
        "health": {"interval": "500ms", "rise": 2, "fall": 2},
        # This machine's kernel has no dummy interfaces (no modules): the VIP goes on lo, managed by networkd.
        "network": {"manager": "networkd", "interface": "lo"},
        # This sandbox caps file descriptors at 20000; HAProxy wants 2 per connection.
        "haproxy": {"maxconn": 5000},
    }


@pytest.fixture(scope="module")
def systemd_lab() -> Iterator[SystemdLab]:
    image = nspawn_prerequisites()
    wheelhouse = wheelhouse_for_nodes()
    if missing_programs():
        pytest.skip(f"Ceph is not installed: {missing_programs()}")
    with Lab() as lab:
        router = start_router(lab, [NODE], ["198.51.100.0/24"])
        rgw_ns = router.segment(lab, "rgw", 1)
        for address in (*RGW, "100.64.1.10"):
            add_address(rgw_ns, "lo", f"{address}/32")
        rgw = start_cluster(rgw_ns, lab.path("ceph"), list(RGW), "100.64.1.10")
        lab.cleanups.append(rgw.stop)
        node = boot_node(lab, router, "n1", NODE, image=image)
        install_ober(node, wheelhouse)
        # ober's users and directories, the VIP interface's manager (the venv is there: nothing to install).
        node.run(f"{OBER} bootstrap /opt/ober --yes", timeout=300)
        certs = lab.path("certs")
        write_pem(certs / "s3.pem", "s3.lab.test", [f"IP:{VIP}"])
        node.put(certs / "s3.pem", "/opt/ober/etc/certs/s3.pem", 0o600)
        wanted = lab.path("cfg") / "ober.yaml"
        wanted.write_text(yaml.safe_dump(config_data()))
        node.put(wanted, "/root/ober-new.yaml")
        node.run(f"{OBER} config --from /root/ober-new.yaml", timeout=120)
        systemd_lab = SystemdLab(lab, router, node, rgw)
        started = node.run("systemctl enable --now ober-http ober-bgp", timeout=60, check=False)
        if started.returncode != 0:
            pytest.fail(f"the units did not start: {started.stderr.strip()}\n{systemd_lab.journal()}")
        systemd_lab.announced_after = systemd_lab.wait_hops([NODE], timeout=60)
        yield systemd_lab


@pytest.fixture(autouse=True)
def node_in_service(systemd_lab: SystemdLab) -> Iterator[None]:
    """Each test starts with the node in service and must leave it so (checked, bounded, with the journal)."""
    systemd_lab.in_service()
    yield
    systemd_lab.in_service()


def test_units_start_and_the_node_announces(systemd_lab: SystemdLab) -> None:
    took = systemd_lab.announced_after
    assert systemd_lab.active("ober-http") == "active" and systemd_lab.active("ober-bgp") == "active"
    status = yaml.safe_load(systemd_lab.node.run(f"{OBER} status --json").stdout)
    assert status["bgp"]["sessions"] == {"100.64.0.1": "established"}
    assert status["bgp"]["announced"] == {"100.64.0.1": [f"{VIP}/32"]}
    assert status["units"] == {"ober-http": "active", "ober-bgp": "active"}
    print(f"announced {took:.2f}s after the units started")


# The capabilities ober-http's bounding set keeps (linux/capability.h numbers): the master's, never the workers'.
HTTP_CAPS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10}
HTTP_CAPS["CAP_SYS_CHROOT"] = 18


def processes(node: NspawnNode, unit: str) -> dict[int, dict[str, str]]:
    """Every process of ``unit`` (its cgroup), with the fields of /proc/PID/status and its root directory."""
    script = (
        f"for pid in $(grep -l '/{unit}.service$' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3); do "
        'echo "== $pid $(readlink /proc/$pid/root)"; cat /proc/$pid/status; done'
    )
    found: dict[int, dict[str, str]] = {}
    fields: dict[str, str] = {}
    for line in node.run(script).stdout.splitlines():
        if line.startswith("== "):
            _, pid, root = line.split(" ", 2)
            fields = {"root": root}
            found[int(pid)] = fields
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return found


def uid_of(node: NspawnNode, user: str) -> str:
    return node.run(f"id -u {user}").stdout.strip()


def test_daemons_run_unprivileged_in_their_sandboxes(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    master = int(systemd_lab.main_pid("ober-http"))
    http = processes(node, "ober-http")
    assert master in http and len(http) >= 2, http
    # The master stays root (a reload re-executes it), with only the capabilities it needs, and no new privileges.
    assert http[master]["Uid"].split() == ["0"] * 4
    assert int(http[master]["CapBnd"], 16) == sum(1 << bit for bit in HTTP_CAPS.values())
    haproxy = uid_of(node, "ober-haproxy")
    for pid, status in http.items():
        assert status["NoNewPrivs"] == "1"
        if pid != master:  # the workers: unprivileged, no capability at all, in the empty chroot
            assert status["Uid"].split() == [haproxy] * 4, status
            assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
            assert status["root"] == "/opt/ober/run/empty"
    bgp = processes(node, "ober-bgp")
    commands = node.run(f"cat {' '.join(f'/proc/{pid}/cmdline' for pid in bgp)} | tr '\\0' ' '").stdout
    assert "bin/exabgp" in commands and "bin/ober health" in commands  # ExaBGP and the helper it runs
    ober_bgp = uid_of(node, "ober-bgp")
    for status in bgp.values():
        assert status["Uid"].split() == [ober_bgp] * 4 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
    # What each may touch: the MD5 secret's file stays root's; ober health writes only its own directory and reads
    # HAProxy's state through the read-only socket of its group.
    listing = node.run(
        "stat -c '%n %a %U %G' /opt/ober/etc/exabgp.conf /opt/ober/run/haproxy.sock /opt/ober/run/health.sock "
        "/opt/ober/run/health /opt/ober/run/health/health.json"
    ).stdout.splitlines()
    assert listing == [
        "/opt/ober/etc/exabgp.conf 600 root root",
        "/opt/ober/run/haproxy.sock 600 root root",
        "/opt/ober/run/health.sock 660 root ober-bgp",
        "/opt/ober/run/health 755 ober-bgp ober-bgp",
        "/opt/ober/run/health/health.json 640 ober-bgp ober-bgp",  # ExaBGP's umask (daemon.umask)
    ]
    # As ober-bgp: HAProxy's state yes, a change no, the admin socket not at all.
    as_bgp = "runuser -u ober-bgp -- /opt/ober/venv/bin/python -c"
    probe = (
        "import sys; from ober.haproxy_runtime import query; "
        "print(query(sys.argv[1], sys.argv[2], 2.0).splitlines()[0][:40])"
    )
    seen = node.run(f"{as_bgp} '{probe}' /opt/ober/run/health.sock 'show stat'").stdout
    assert seen.startswith("# pxname,svname"), seen
    refused = node.run(f"{as_bgp} '{probe}' /opt/ober/run/health.sock 'disable frontend fe_s3-a'").stdout
    assert "Permission denied" in refused, refused
    admin = node.run(f"{as_bgp} '{probe}' /opt/ober/run/haproxy.sock 'show info'", check=False)
    assert admin.returncode != 0 and "Permission denied" in admin.stderr, admin.stderr
    # ober's own metrics with these privileges: the chrooted workers reach ober health's abstract socket (no file of
    # ober-bgp's in their sight), and ober health reads HAProxy's version through the read-only socket.
    scrape = (
        "import urllib.request; from ober.config import load_config; "
        "c = load_config('/opt/ober/etc/ober.yaml'); "
        "r = urllib.request.urlopen(f'http://{c.stats.bind}:{c.stats.port}/ober/metrics', timeout=10); "
        "print(r.read().decode(), r.status, sep='')"
    )
    scraped = node.run(f'/opt/ober/venv/bin/python -c "{scrape}"').stdout.strip()
    body, _, code = scraped.rpartition("\n")
    assert code == "200", scraped[-500:]
    assert "ober_exabgp_up 1" in body.splitlines(), body[:2000]
    info = next(line for line in body.splitlines() if line.startswith("ober_info{"))
    assert 'haproxy_version="3.' in info, info
    # systemd's own rating of each unit's exposure (0 = fully sandboxed, 10 = none), for the README.
    scores = {}
    for unit in ("ober-http", "ober-bgp", "ober-certs"):
        rating = node.run(f"systemd-analyze security --no-pager {unit}.service | tail -n 1").stdout
        scores[unit] = float(rating.split(":")[1].split()[0])
    print(f"systemd-analyze security exposure: {scores}")
    assert scores["ober-http"] <= 3.5 and scores["ober-bgp"] <= 2.5 and scores["ober-certs"] <= 2.5, scores


def test_vip_is_on_the_node_and_serves_s3(systemd_lab: SystemdLab) -> None:
    addresses = systemd_lab.node.run("ip -4 -o addr show dev lo").stdout
    assert f"{VIP}/32" in addresses and "127.0.0.1/8" in addresses  # networkd applied `ober config`'s file
    # From the router: through the ECMP route, TLS on the VIP, answered by RGW behind HAProxy.
    done = run_in(systemd_lab.router.ns, ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://{VIP}/"])
    assert done.stdout == "200"


def test_reload_with_a_broken_config_keeps_the_running_haproxy(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    node.run("cp -a /opt/ober/etc/haproxy.cfg /root/haproxy.cfg.good")
    node.run("echo '    no-such-keyword 1' >> /opt/ober/etc/haproxy.cfg")
    failed = node.run("systemctl reload ober-http", check=False)
    node.run("cp -a /root/haproxy.cfg.good /opt/ober/etc/haproxy.cfg")
    assert failed.returncode != 0  # the ExecReload check refused it before signalling HAProxy
    assert systemd_lab.active("ober-http") == "active"
    assert systemd_lab.hops() == [NODE]


def test_config_set_invalid_leaves_the_node_untouched(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    before = node.run("sha256sum /opt/ober/etc/*.cfg /opt/ober/etc/*.conf /opt/ober/etc/ober.yaml").stdout
    bad = node.run(f"{OBER} config --set bgp.hold_time=1", check=False)
    assert bad.returncode == 1 and "bgp.hold_time: 1 is out of range" in bad.stderr
    assert node.run("sha256sum /opt/ober/etc/*.cfg /opt/ober/etc/*.conf /opt/ober/etc/ober.yaml").stdout == before


def test_config_change_is_a_hitless_reload(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    main_pid = systemd_lab.main_pid("ober-http")
    try:
        done = node.run(f"{OBER} --json config --set haproxy.timeouts.client=20m", timeout=120)
        assert "reload ober-http" in yaml.safe_load(done.stdout)["actions"]
        assert systemd_lab.main_pid("ober-http") == main_pid  # reloaded, not restarted
        assert "timeout client 1200s" in node.run("cat /opt/ober/etc/haproxy.cfg").stdout
        assert systemd_lab.hops() == [NODE]
    finally:
        node.run(f"{OBER} config --set haproxy.timeouts.client=900s", timeout=120)  # the default, as before


def test_ober_reload_keeps_the_node_announced(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    pids = {unit: systemd_lab.main_pid(unit) for unit in ("ober-http", "ober-bgp")}
    health_pid = node.run("pgrep -f 'bin/ober health'").stdout.split()
    session = systemd_lab.bird_session()
    reloads = "journalctl -u ober-bgp -o cat --no-pager | grep -c 'loaded new configuration successfully'"
    before = int(node.run(reloads, check=False).stdout.strip() or 0)
    with RoutePoll(systemd_lab) as poll:
        node.run(f"{OBER} reload", timeout=60)
        deadline = time.monotonic() + 30
        while int(node.run(reloads, check=False).stdout.strip() or 0) == before:  # ExaBGP reloads asynchronously
            assert time.monotonic() < deadline, f"ExaBGP did not reload\n{systemd_lab.journal()}"
            time.sleep(0.1)
        time.sleep(HOLD_TIME)  # a reload that stalled keepalives would show as a lost session within the hold time
    assert poll.lost() == [], f"the node left the route during the reload: {poll.lost()[:3]}"
    assert len(poll.samples) > 100 and poll.widest_gap() < 0.5
    # Nothing restarted: not HAProxy, not ExaBGP, not ober health (whose rise/fall state would start over), and the
    # router's BGP session is the same one (a re-established session shows a new "since" time).
    assert {unit: systemd_lab.main_pid(unit) for unit in pids} == pids
    assert node.run("pgrep -f 'bin/ober health'").stdout.split() == health_pid
    assert systemd_lab.bird_session() == session
    status = yaml.safe_load(node.run(f"{OBER} status --json").stdout)  # ExaBGP's CLI still answers after it
    assert status["bgp"]["announced"] == {"100.64.0.1": [f"{VIP}/32"]}
    gap = poll.widest_gap() * 1000
    print(f"ober reload: route polled {len(poll.samples)} times (widest gap {gap:.0f} ms), never lost")


def test_bgp_reload_with_a_broken_config_is_refused(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    session = systemd_lab.bird_session()
    node.run(f"cp -a {EXABGP_CONF} /root/exabgp.conf.good && echo 'no-such-section {{' >> {EXABGP_CONF}")
    try:
        failed = node.run(f"{OBER} reload", timeout=60, check=False)
    finally:
        node.run(f"cp -a /root/exabgp.conf.good {EXABGP_CONF}")
    # Refused before ExaBGP is signalled: it would re-read the copy systemd gave it at start, not this file.
    assert failed.returncode == 1 and "ober-bgp" in failed.stderr
    journal = node.run("journalctl -u ober-bgp -n 20 --no-pager -o cat").stdout
    assert f"{EXABGP_CONF} changed since ExaBGP started: restart ober-bgp to take it" in journal
    assert systemd_lab.active("ober-bgp") == "active"
    assert systemd_lab.bird_session() == session and systemd_lab.hops() == [NODE]


def test_logs_show_ober_health_not_exabgp_counters(systemd_lab: SystemdLab) -> None:
    # Every line the unit wrote since the node booted, however chatty ExaBGP is.
    logs = systemd_lab.node.run(f"{OBER} logs -n 100000 --service bgp").stdout
    health = [line for line in logs.splitlines() if "[ober]" in line]
    assert any("health: watching" in line for line in health), logs[-2000:]
    assert any(f"{VIP}:" in line and "-> up" in line for line in health), logs[-2000:]  # the announce decision
    # Keepalive counters (two lines a second) are off, so the last lines show what ober health decided.
    assert "statistics for" not in logs


def test_bgp_config_change_reaches_the_router(systemd_lab: SystemdLab) -> None:
    # A changed router-id renames ExaBGP's neighbor: a reload would bring the session back with no route (seen).
    node = systemd_lab.node
    try:
        done = node.run(f"{OBER} --json config --set bgp.router_id=100.64.0.99", timeout=120)
        assert "restart ober-bgp" in yaml.safe_load(done.stdout)["actions"]
        back = systemd_lab.wait_hops([NODE], timeout=60)
    finally:
        node.run(f"{OBER} config --set bgp.router_id={NODE}", timeout=120)
    print(f"bgp.router_id changed: announced again {back:.2f}s after ober config returned")


def test_haproxy_crash_is_withdrawn_over_the_live_session_and_comes_back(systemd_lab: SystemdLab) -> None:
    # HAProxy's master crashing (systemd then kills its workers). ExaBGP is not bound to HAProxy: it stays up and
    # `ober health`, woken by the master's exit, withdraws over the session, which a router honours at once even
    # with graceful restart (a session that merely drops is held as stale for the whole restart time).
    # With ober-http's KillMode=mixed, systemd in these nodes (257) missed the cgroup-empty event after about half
    # of such crashes (3 stuck of 6 with mixed, 0 of 5 with control-group; `journal` names the state).
    session = systemd_lab.bird_session()
    bgp_pid = systemd_lab.main_pid("ober-bgp")
    systemd_lab.node.run("systemctl kill -s KILL --kill-whom=main ober-http")
    gone = systemd_lab.wait_hops([])
    back = systemd_lab.wait_hops([NODE], timeout=60)  # Restart=always brings HAProxy back, `rise` checks announce
    assert systemd_lab.main_pid("ober-bgp") == bgp_pid, "ExaBGP was restarted: its session dropped"
    assert systemd_lab.bird_session() == session, "the router's session was re-established (it had dropped)"
    print(f"HAProxy killed -> route gone in {gone:.2f}s; back and announcing {back:.2f}s later")


def test_ober_stop_withdraws_before_the_units_stop(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    done = node.run(f"{OBER} --json stop --timeout 5", timeout=60)
    assert yaml.safe_load(done.stdout)["withdrawn"] is True
    assert systemd_lab.hops() == []
    units = [systemd_lab.active("ober-http"), systemd_lab.active("ober-bgp")]
    assert units == ["inactive", "inactive"], f"{units}: {done.stdout}\n{systemd_lab.journal(80)}"
    journal = node.run("journalctl -o short-unix --no-pager -u ober-bgp -u ober-http -n 200").stdout
    withdrawn = [line for line in journal.splitlines() if "-> disabled (maintenance), withdraw" in line]
    stopping = [line for line in journal.splitlines() if "Stopping ober-http" in line or "Stopping ober" in line]
    assert withdrawn and stopping
    assert float(withdrawn[-1].split()[0]) < float(stopping[-1].split()[0])
    node.run(f"{OBER} start", timeout=60)
    systemd_lab.wait_hops([NODE])


def test_the_discovery_timer_runs_reconcile_in_its_sandbox_and_stops_when_discovery_goes(
    systemd_lab: SystemdLab,
) -> None:
    """The timer's service as systemd runs it (root in its sandbox): it drains the RGW discovery lost, no reload."""
    node = systemd_lab.node
    kept, lost = (f"{address}:7480" for address in RGW)
    node.run(f"echo 'ceph-a: [\"{kept}\"]' > /opt/ober/etc/rgw.yaml")
    data = config_data()
    data["backends"]["ceph-a"]["discovery"] = {"source": "file", "path": "/opt/ober/etc/rgw.yaml", "interval": "2s"}
    wanted = systemd_lab.lab.path("cfg") / "ober-discovery.yaml"
    wanted.write_text(yaml.safe_dump(data))
    node.put(wanted, "/root/ober-discovery.yaml")
    main_pid = systemd_lab.main_pid("ober-http")
    try:
        done = node.run(f"{OBER} --json config --from /root/ober-discovery.yaml", timeout=120)
        assert "restart ober-discovery.timer" in yaml.safe_load(done.stdout)["actions"]
        assert systemd_lab.active("ober-discovery.timer") == "active"
        deadline = time.monotonic() + 60  # the first run 10 s after the timer starts
        listed: dict[str, Any] = {}
        while time.monotonic() < deadline:
            doc = yaml.safe_load(node.run(f"{OBER} --json backends list").stdout)
            [group] = doc["groups"]
            listed = {m["server"]: m["state"] for m in group["servers"]}
            if listed.get(lost) == "drained":
                break
            time.sleep(1)
        journal = node.run("journalctl -u ober-discovery -n 20 --no-pager", check=False).stdout
        assert listed == {kept: "serving", lost: "drained"}, f"{listed}\n{journal}"
        assert f"ceph-a (file /opt/ober/etc/rgw.yaml): drain {lost} in ceph-a" in journal, journal
        last = group["discovery"]["last_run"]
        assert last["action"] in ("drain", "none") and last["error"] is None, last
        assert systemd_lab.main_pid("ober-http") == main_pid, "discovery's change needs no reload"
        assert systemd_lab.hops() == [NODE]
    finally:
        # Back as the module's other tests want it: no discovery (its timer stopped), both RGWs serving.
        restored = node.run(f"{OBER} --json config --from /root/ober-new.yaml --replace", timeout=120).stdout
    assert systemd_lab.active("ober-discovery.timer") == "inactive", restored
    assert systemd_lab.active("ober-discovery.service") == "inactive", "stopped, not left failed"
    assert node.run("test -e /etc/systemd/system/ober-discovery.timer", check=False).returncode == 1
