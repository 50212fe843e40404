"""`graceful_stop` step by step, with systemd and the clock faked (the real units: tests/test_node_inflight.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ober.config import NodeConfig
from ober.drain import QUIESCE_POLL, busy_client_sockets, quiesce
from ober.haproxy_runtime import BackendState, Snapshot
from ober.lifecycle import count_vip_connections, graceful_stop

SS = """\
0      0      198.51.100.10:443   100.64.9.2:51234
0      0      198.51.100.10:443   100.64.9.2:51236
0      0      100.64.0.11:22      100.64.0.1:40000
0      0      100.64.0.11:41000   100.64.1.11:7480
0      0      [::ffff:198.51.100.11]:80   [::ffff:100.64.9.2]:5000
"""


class FakeNode:
    """systemd and a clock: HAProxy's soft stop ends after ``finishes_after`` seconds (None: never)."""

    def __init__(self, finishes_after: float | None, killed_state: str = "inactive") -> None:
        self.killed_state = killed_state
        """What systemd says after the hard stop ("failed" when the master's exit status counts as a failure)."""
        self.now = 0.0
        self.calls: list[tuple[str, ...]] = []
        self.finishes_after = finishes_after
        self.stop_at: float | None = None
        self.killed = False

    def systemctl(self, *args: str) -> None:
        self.calls.append(args)
        if args[0] == "stop":
            self.stop_at = self.now
        if args[0] == "reset-failed":
            self.killed_state = "inactive"

    def state(self, unit: str) -> str:
        assert unit == "ober-http"
        if self.stop_at is None:
            return "active"
        if self.killed:
            return self.killed_state
        if self.finishes_after is not None and self.now >= self.stop_at + self.finishes_after:
            return "inactive"
        return "deactivating"

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)
        if self.calls and self.calls[-1][0] == "kill":
            self.killed = True


def stop(config: NodeConfig, node: FakeNode, timeout: float, sessions: Callable[[], int]) -> tuple[int, float]:
    report = graceful_stop(
        config,
        node.systemctl,
        timeout=timeout,
        sleep=node.sleep,
        clock=lambda: node.now,
        state=node.state,
        sessions=sessions,
    )
    assert report.withdrawn  # no health process in a unit test: nothing can be announced
    return report.sessions_left, report.waited


def config_in(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> NodeConfig:
    health = {"interval": "1s", "rise": 2, "fall": 3, "drain_timeout": "5m", "maintenance_file": str(tmp_path / "m")}
    return make_config(install_path=str(tmp_path), health=health)


def test_requests_that_finish_in_time_are_not_cut(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    node = FakeNode(finishes_after=7.0)
    left, waited = stop(config_in(tmp_path, make_config), node, 60, sessions=lambda: 99)
    # One soft stop of both units (ExaBGP first by their ordering), after the routers converged; no kill.
    assert node.calls == [("stop", "--no-block", "ober-bgp", "ober-http")]
    assert node.stop_at is not None and node.stop_at >= 2.0
    assert left == 0 and 9.0 <= waited < 10.0  # returned once HAProxy was gone, not at the timeout
    assert not (tmp_path / "m").exists()  # the drain made for the stop is lifted for the next start


def test_the_timeout_hard_stops_and_counts_what_it_cut(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    node = FakeNode(finishes_after=None)
    left, waited = stop(config_in(tmp_path, make_config), node, 6, sessions=lambda: 2)
    assert node.calls == [
        ("stop", "--no-block", "ober-bgp", "ober-http"),
        ("kill", "--kill-whom=main", "--signal=SIGTERM", "ober-http"),
    ]
    assert left == 2 and 6.0 <= waited < 7.0


def test_a_hard_stop_does_not_leave_the_unit_failed(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    node = FakeNode(finishes_after=None, killed_state="failed")
    stop(config_in(tmp_path, make_config), node, 6, sessions=lambda: 1)
    assert node.calls[-1] == ("reset-failed", "ober-http") and node.state("ober-http") == "inactive"


def test_an_operators_drain_stays(tmp_path: Path, make_config: Callable[..., NodeConfig]) -> None:
    config = config_in(tmp_path, make_config)
    (tmp_path / "m").write_text('{"by": "ops", "since": 1, "reason": "disk"}\n')
    stop(config, FakeNode(finishes_after=0.0), 60, sessions=lambda: 0)
    assert (tmp_path / "m").exists()


def test_connections_counted_are_those_on_the_vips() -> None:
    assert count_vip_connections(SS, ["198.51.100.10"]) == 2
    assert count_vip_connections(SS, ["198.51.100.10", "198.51.100.11"]) == 3
    assert count_vip_connections("", ["198.51.100.10"]) == 0


def test_quiesce_returns_at_the_first_moment_with_no_request_in_flight(
    tmp_path: Path, make_config: Callable[..., NodeConfig]
) -> None:
    config = config_in(tmp_path, make_config)
    group = f"be_{config.vips[0].backend}"
    clock = [0.0]
    # Requests in flight on the S3 backend, look by look; other backends (not behind a VIP) do not count.
    seen = iter([3, 1, 2, 0, 5])

    def read() -> Snapshot:
        return Snapshot({group: BackendState(2, 2, next(seen)), "be_other": BackendState(1, 1, 9)}, {"fe_x": 40})

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    quiet = quiesce(config, 10.0, read=read, sockets=lambda: 0, sleep=sleep, clock=lambda: clock[0])
    assert quiet.in_flight == 0 and quiet.waited == pytest.approx(3 * QUIESCE_POLL)

    # Never quiet: it gives up at the timeout and says how many were in flight then.
    quiet = quiesce(
        config, 0.02, read=lambda: Snapshot({group: BackendState(2, 2, 1)}, {}), sleep=sleep, clock=lambda: clock[0]
    )
    assert quiet.in_flight == 1 and quiet.waited >= 0.02

    # No backend stream, but a response's last bytes still queued to a client: not quiet yet.
    idle = Snapshot({group: BackendState(2, 2, 0)}, {})
    queued = iter([1, 1, 0])
    quiet = quiesce(config, 10.0, read=lambda: idle, sockets=lambda: next(queued), sleep=sleep, clock=lambda: clock[0])
    assert quiet.in_flight == 0 and next(queued, None) is None


# /proc/net/tcp on a lab node during a withdraw: a listener, an idle keep-alive client, a client whose GET response
# still has 2.9 MB queued (the kernel's tx_queue), one on another address with bytes queued, and a received request.
PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A6433C6:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4862000 1
   1: 0A6433C6:01BB 020A4064:EAB0 01 00000000:00000000 00:00000000 00000000     0        0 4862009 1
   3: 0A6433C6:01BB 020A4064:EAB2 01 002C3BD0:00000000 01:00001518 0000000A     0        0 4862010 2
   4: 0B4064C6:01BB 020A4064:EAB4 01 00001000:00000000 01:00001518 00000000     0        0 4862011 2
   5: 146433C6:01BB 020A4064:EAB6 01 00000000:0000022A 00:00000000 00000000     0        0 4862012 1
"""


def test_client_sockets_with_bytes_queued_on_the_vips_count_as_busy() -> None:
    assert busy_client_sockets(PROC_NET_TCP, ["198.51.100.10"]) == 1
    assert busy_client_sockets(PROC_NET_TCP, ["198.51.100.10", "198.51.100.20"]) == 2  # rx queue: a request
    assert busy_client_sockets(PROC_NET_TCP, ["198.51.100.99"]) == 0
    assert busy_client_sockets("garbage\n1: x", ["198.51.100.10"]) == 0
