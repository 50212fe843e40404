"""Rendering: every template, fed to the real HAProxy (2.6 here, 3.0 in the Debian 13 image) and ExaBGP."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ober.config import NodeConfig, parse_node_config
from ober.errors import ConfigError, RenderError, SecretsError
from ober.lab.netns import Lab, run_in, set_sysctl
from ober.render import NODE_USERS, paths, render_node, seconds
from ober.validate import Tool, check_exabgp, check_haproxy, local_run_as
from tests.conftest import SECRETS, require

HAPROXY_CFG = "/opt/ober/etc/haproxy.cfg"
EXABGP_CONF = "/opt/ober/etc/exabgp.conf"


def _variant(node_data: dict[str, Any], name: str) -> dict[str, Any]:
    """The example config changed into one of the shapes every template must handle."""
    data = dict(node_data)
    if name == "single-vip-plain":
        data["vips"] = [{"address": "198.51.100.10", "backend": "ceph-a"}]
        data["backends"] = {"ceph-a": {"servers": "100.64.1.11"}}
        data["bgp"] = {"router_id": "100.64.0.11", "neighbors": "100.64.0.1"}
        data["whitelists"] = {}
        data["stats"] = {}
        data["certificates"] = {"pem": "/opt/ober/etc/certs/s3.pem", "http": "off"}
        data["network"] = {"manager": "networkd"}
        data["kernel_profile"] = "none"
        data["haproxy"] = {"per_source": {"connections": 0}}  # the off switch
    elif name == "multi-vip-tls-whitelists":
        pass  # the example: 2 VIPs, 2 groups, 2 neighbors, backend TLS, whitelists, stats auth, md5, drain
    elif name == "three-groups-sni-dir":
        data["backends"] = {
            "ceph-a": {"servers": "100.64.1.[11-13]:7480", "check": {"method": "HEAD", "path": "/"}},
            # Every connection reuse mode (ceph-a: auto, the default).
            "ceph-b": {"servers": "100.64.2.[11-12]", "tls": {"enabled": True, "verify": False}, "reuse": "never"},
            "ceph-c": {
                "servers": ["100.64.3.11:8080"],
                "check": {"interval": "500ms", "rise": 1, "fall": 2},
                "reuse": "always",
            },
        }
        data["vips"] = [
            {"address": "198.51.100.10", "backend": "ceph-a"},
            {"address": "198.51.100.11", "backend": "ceph-b"},
            {"address": "198.51.100.12", "backend": "ceph-c"},
        ]
        data["certificates"] = {"pem": "/opt/ober/etc/certs", "http": "serve"}
        data["bgp"] = {**data["bgp"], "neighbors": "100.64.0.[1-4]", "graceful_restart": 120}
        data["whitelists"] = {"frontend_http": "198.18.0.[1-3]"}
        data["network"] = {"manager": "networkmanager"}
        data["stats"] = {"bind": "127.0.0.1", "port": 9404}
        data["haproxy"] = {"per_source": {"connections": 200, "rate": 500, "period": "30s"}}
    elif name == "acme-whitelisted":
        # HTTP-01 answered from the runtime map before the redirect; port 80 open to validators past the allow-list.
        data["certificates"] = {"acme": {"email": "ops@example.com", "domains": "s3.example.com"}, "http": "redirect"}
    elif name == "acme-serve-open":
        data["certificates"] = {"acme": {"email": "ops@example.com", "domains": "s3.example.com"}, "http": "serve"}
        data["whitelists"] = {"backend_http": "198.18.0.0/15"}  # no frontend_http: S3 clients from anywhere
    else:  # pragma: no cover - a typo in the parameter list
        raise AssertionError(name)
    return data


VARIANTS = [
    "single-vip-plain",
    "multi-vip-tls-whitelists",
    "three-groups-sni-dir",
    "acme-whitelisted",
    "acme-serve-open",
]


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest, node_data: dict[str, Any]) -> NodeConfig:
    return parse_node_config(_variant(node_data, str(request.param)))


def test_haproxy_26_accepts_every_variant(variant: NodeConfig) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    result = check_haproxy(variant, SECRETS)
    # Only a name this machine cannot resolve may warn; nothing in the template itself.
    assert [w for w in result.warnings if "could not resolve" not in w] == []


def test_haproxy_30_accepts_every_variant(variant: NodeConfig, haproxy30: Tool) -> None:
    config = dataclasses.replace(variant, haproxy=dataclasses.replace(variant.haproxy, version="3.0"))
    assert "ssl-default-bind-curves" in render_node(config, SECRETS).file(HAPROXY_CFG).content
    result = check_haproxy(config, SECRETS, haproxy30)
    assert [w for w in result.warnings if "could not resolve" not in w] == []


def test_haproxy_26_target_leaves_out_newer_directives(make_config: Callable[..., NodeConfig]) -> None:
    text = render_node(make_config(), SECRETS).file(HAPROXY_CFG).content
    assert "ssl-default-bind-curves" not in text


def test_exabgp_accepts_every_variant(variant: NodeConfig) -> None:
    result = check_exabgp(variant, SECRETS)
    assert result.tool == "exabgp"


def test_haproxy_check_quotes_what_haproxy_rejects(make_config: Callable[..., NodeConfig], tmp_path: Path) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    bad_pem = tmp_path / "broken.pem"
    bad_pem.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    config = make_config(certificates={"pem": str(bad_pem)})
    with pytest.raises(RenderError) as error:
        check_haproxy(config, SECRETS)
    assert error.value.message.startswith("haproxy -c rejected /opt/ober/etc/haproxy.cfg:")
    assert str(bad_pem) in error.value.message


def test_exabgp_check_quotes_what_exabgp_rejects(make_config: Callable[..., NodeConfig]) -> None:
    config = make_config()
    # Below ExaBGP's minimum; ober's own validation refuses it too, so bypass it to test the real check.
    bad = dataclasses.replace(config, bgp=dataclasses.replace(config.bgp, hold_time=1))
    with pytest.raises(RenderError) as error:
        check_exabgp(bad, SECRETS)
    assert "exabgp rejected /opt/ober/etc/exabgp.conf" in error.value.message


def test_rendering_is_deterministic_and_hash_detects_change(make_config: Callable[..., NodeConfig]) -> None:
    first, again = render_node(make_config(), SECRETS), render_node(make_config(), SECRETS)
    assert [(f.path, f.content, f.mode) for f in first.files] == [(f.path, f.content, f.mode) for f in again.files]
    assert first.digest == again.digest
    changed = render_node(make_config(health={"rise": 5}), SECRETS)
    assert changed.digest != first.digest


def test_secrets_stay_out_of_config_and_haproxy_cfg(make_config: Callable[..., NodeConfig]) -> None:
    rendered = render_node(make_config(), SECRETS)
    for item in rendered.files:
        holds_secret = any(value in item.content for value in SECRETS.values())
        if holds_secret:
            assert item.mode == 0o600, item.path
    assert SECRETS["bgp_md5"] in rendered.file(EXABGP_CONF).content
    assert SECRETS["stats_password"] in rendered.file("/opt/ober/etc/secrets.env").content
    for public in ("/opt/ober/etc/ober.yaml", HAPROXY_CFG):
        assert not any(value in rendered.file(public).content for value in SECRETS.values())


def test_missing_secret_is_named_never_shown(make_config: Callable[..., NodeConfig]) -> None:
    with pytest.raises(SecretsError) as error:
        render_node(make_config(), {"stats_password": "x-only"})
    # The field that names it: the name itself may be a secret typed in the wrong place.
    assert error.value.message.startswith("bgp.md5_secret: ")
    assert "x-only" not in str(error.value)


def test_haproxy_cfg_content_for_s3(make_config: Callable[..., NodeConfig]) -> None:
    text = render_node(make_config(), SECRETS).file(HAPROXY_CFG).content
    for line in (
        "master-worker",
        "stats socket /opt/ober/run/haproxy.sock mode 600 level admin expose-fd listeners",
        "bind 198.51.100.10:443 ssl crt /opt/ober/etc/certs/s3.pem alpn http/1.1",
        "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "balance leastconn",
        "http-reuse safe",
        "option forwardfor",
        "http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        "timeout client 900s",
        "hard-stop-after 3600s",
        "http-request use-service prometheus-exporter if { path /metrics }",
        "tcp-request connection reject unless { src -f /opt/ober/etc/whitelist/frontend-http.lst }",
        "http-check send meth GET uri / ver HTTP/1.0",
        "default-server init-addr last,libc,none check inter 1s fastinter 200ms rise 2 fall 3 "
        "observe layer4 error-limit 1 on-error fastinter",
    ):
        assert line in text, line
    # Nothing may rewrite Host (SigV4 signs it), buffer bodies, cap their size, or log each request.
    for forbidden in ("set-header Host", "http-buffer-request", "req.body_size", "option httplog", "log global"):
        assert forbidden not in text, forbidden


def test_files_per_network_manager(make_config: Callable[..., NodeConfig]) -> None:
    netplan = render_node(make_config(network={"manager": "netplan"}), SECRETS)
    text = netplan.file("/etc/netplan/60-ober0.yaml").content
    assert "dummy-devices:" in text and "198.51.100.10/32" in text and "198.51.100.20/32" in text
    networkd = render_node(make_config(network={"manager": "networkd", "interface": "vip0"}), SECRETS)
    assert "Kind=dummy" in networkd.file("/etc/systemd/network/60-vip0.netdev").content
    assert "Address=198.51.100.20/32" in networkd.file("/etc/systemd/network/60-vip0.network").content
    nm = render_node(make_config(network={"manager": "networkmanager"}), SECRETS)
    item = nm.file("/etc/NetworkManager/system-connections/ober0.nmconnection")
    assert "type=dummy" in item.content and item.mode == 0o600
    # Only the chosen manager's files are rendered.
    assert not any("/etc/netplan/" in f.path for f in networkd.files)


def test_units_pair_bgp_with_http(make_config: Callable[..., NodeConfig]) -> None:
    rendered = render_node(make_config(), SECRETS)
    bgp = rendered.file("/etc/systemd/system/ober-bgp.service").content
    http = rendered.file("/etc/systemd/system/ober-http.service").content
    # Not bound: ExaBGP outlives a dead HAProxy so ober health can withdraw over the live session.
    assert "BindsTo=" not in bgp and "After=ober-http.service" in bgp
    assert "StartLimitIntervalSec=0" in bgp and "StartLimitIntervalSec=0" in http
    assert "Type=notify" in http
    # Reload validates before signalling: the -c line comes before the USR2.
    assert http.index("ExecReload=/usr/sbin/haproxy -Ws -f $CONFIG -c -q") < http.index("ExecReload=/bin/kill -USR2")


def test_sysctl_and_journald(make_config: Callable[..., NodeConfig]) -> None:
    tuned = render_node(make_config(kernel_profile="throughput", logs={"retention": "7d"}), SECRETS)
    assert "net.ipv4.ip_nonlocal_bind = 1" in tuned.file("/etc/sysctl.d/90-ober.conf").content
    assert "net.core.rmem_max = 67108864" in tuned.file("/etc/sysctl.d/90-ober.conf").content
    assert "MaxRetentionSec=604800s" in tuned.file("/etc/systemd/journald.conf.d/90-ober.conf").content
    none = render_node(make_config(kernel_profile="none"), SECRETS)
    assert "net." not in none.file("/etc/sysctl.d/90-ober.conf").content


def sysctl_values(text: str) -> dict[str, str]:
    pairs = (line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.mark.parametrize(("port", "reserved"), [(8404, "8404"), (20000, "20000"), (1023, None)])
def test_no_port_ober_listens_on_is_a_source_port(
    make_config: Callable[..., NodeConfig], port: int, reserved: str | None
) -> None:
    config = make_config(stats={"bind": "127.0.0.1", "port": port})
    values = sysctl_values(render_node(config, SECRETS).file("/etc/sysctl.d/90-ober.conf").content)
    assert values["net.ipv4.ip_local_port_range"] == "1024 65535"
    # Only what lies in that range needs reserving: 80, 443 and a stats port below 1024 are never source ports.
    assert values.get("net.ipv4.ip_local_reserved_ports") == reserved


@pytest.mark.lab
def test_the_kernel_never_hands_out_the_stats_port_as_a_source_port(make_config: Callable[..., NodeConfig]) -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    values = sysctl_values(render_node(make_config(), SECRETS).file("/etc/sysctl.d/90-ober.conf").content)
    with Lab() as lab:
        ns = lab.netns("ports")
        set_sysctl(ns, "net.ipv4.ip_local_reserved_ports", values["net.ipv4.ip_local_reserved_ports"])
        # A narrow range around the stats port, exhausted by binds to port 0: the kernel picks every free port once.
        set_sysctl(ns, "net.ipv4.ip_local_port_range", "8400 8409")
        script = (
            "import socket\nheld = []\n"  # every socket stays open, so no port is handed out twice
            "while len(held) < 20:\n"
            "    s = socket.socket()\n"
            "    try:\n        s.bind(('127.0.0.1', 0))\n    except OSError:\n        break\n"
            "    held.append(s)\n"
            "print(sorted(s.getsockname()[1] for s in held))\n"
        )
        done = run_in(ns, [sys.executable, "-c", script])
    handed = json.loads(done.stdout)
    assert handed == [8400, 8401, 8402, 8403, 8405, 8406, 8407, 8408, 8409]


def test_unresolved_whitelist_name_is_refused(make_config: Callable[..., NodeConfig]) -> None:
    with pytest.raises(RenderError) as error:
        render_node(make_config(whitelists={"backend_http": "monitor01"}), SECRETS)
    assert "whitelists.backend_http: 'monitor01' is a name" in error.value.message


@pytest.mark.parametrize(("value", "text"), [(1.0, "1s"), (0.5, "500ms"), (900.0, "900s"), (0.25, "250ms")])
def test_seconds_format(value: float, text: str) -> None:
    assert seconds(value) == text


def test_vips_on_lo_with_networkd(make_config: Callable[..., NodeConfig]) -> None:
    rendered = render_node(make_config(network={"manager": "networkd", "interface": "lo"}), SECRETS)
    network = rendered.file("/etc/systemd/network/60-lo.network").content
    assert "Address=127.0.0.1/8" in network and "Address=198.51.100.10/32" in network
    assert not any(f.path.endswith(".netdev") for f in rendered.files)
    with pytest.raises(ConfigError, match=r"VIPs on lo are supported with network\.manager networkd only"):
        make_config(network={"manager": "netplan", "interface": "lo"})


def test_no_unit_orders_itself_into_a_cycle_at_boot(make_config: Callable[..., NodeConfig]) -> None:
    """A path, timer or socket unit comes before basic.target by default, every service after it: one of them
    ordered after a service is a cycle at boot, which systemd breaks by dropping a job (seen: ober-http's, so a
    rebooted node did not serve)."""
    rendered = render_node(make_config(), SECRETS)
    units = {f.path.rsplit("/", 1)[1]: f.content for f in rendered.files if f.path.startswith("/etc/systemd/system/")}
    early = [name for name in units if name.endswith((".path", ".timer", ".socket"))]
    assert "ober-certs.path" in early
    for name in early:
        lines = units[name].splitlines()
        if "DefaultDependencies=no" in lines:
            continue
        after = [unit for line in lines if line.startswith("After=") for unit in line.removeprefix("After=").split()]
        assert [unit for unit in after if unit.endswith(".service")] == [], name


UNIT_DIR = "/etc/systemd/system"


def unit(config: NodeConfig, name: str) -> list[str]:
    return render_node(config, SECRETS).file(f"{UNIT_DIR}/{name}").content.splitlines()


def test_haproxy_workers_drop_root_and_ober_health_gets_a_read_only_socket(
    make_config: Callable[..., NodeConfig],
) -> None:
    lines = [line.strip() for line in render_node(make_config(), SECRETS).file(HAPROXY_CFG).content.splitlines()]
    for line in (
        "user ober-haproxy",
        "group ober-haproxy",
        "chroot /opt/ober/run/empty",
        "stats socket /opt/ober/run/haproxy.sock mode 600 level admin expose-fd listeners",
        "stats socket /opt/ober/run/health.sock mode 660 group ober-bgp level user",
    ):
        assert line in lines, line
    # The master is told nothing about users: it stays root to reload (master-worker), the workers switch.
    assert lines.index("master-worker") < lines.index("user ober-haproxy")


def test_haproxy_check_stands_in_for_users_this_machine_lacks(make_config: Callable[..., NodeConfig]) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    result = check_haproxy(make_config(), SECRETS)
    if local_run_as() == NODE_USERS:  # pragma: no cover - a machine with ober's users checks with them
        assert not any("users" in item for item in result.placeholders)
    else:
        assert "users ober-haproxy, ober-bgp (checked as nobody)" in result.placeholders


def test_http_unit_keeps_the_master_root_with_only_the_capabilities_it_needs(
    make_config: Callable[..., NodeConfig],
) -> None:
    lines = unit(make_config(), "ober-http.service")
    assert not any(line.startswith(("User=", "Group=", "DynamicUser=")) for line in lines)
    caps = next(line for line in lines if line.startswith("CapabilityBoundingSet="))
    assert set(caps.split("=", 1)[1].split()) == {
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SYS_CHROOT",
        "CAP_CHOWN",
        "CAP_KILL",
    }
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/opt/ober/run",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service chroot",
        "ExecStartPre=+/usr/bin/mkdir -p -m 755 /opt/ober/run /opt/ober/run/empty",
        "ExecStop=-/bin/kill -USR1 $MAINPID",  # the soft stop, to the master only
        "KillSignal=SIGCONT",
        "ExecReload=/bin/kill -USR2 $MAINPID",
    ):
        assert line in lines, line
    # ober health (another user) reads HAProxy's pid file: files HAProxy writes stay readable.
    assert not any(line.startswith("UMask=") for line in lines)


def test_haproxy_cfg_has_no_regex_the_http_units_sandbox_would_refuse(variant: NodeConfig) -> None:
    """PCRE2 compiles a regex to machine code (JIT): under MemoryDenyWriteExecute=yes HAProxy refuses the config."""
    assert "MemoryDenyWriteExecute=yes" in unit(variant, "ober-http.service")
    text = render_node(variant, SECRETS).file(paths(variant)["haproxy_cfg"]).content
    assert not re.search(r"\s-m\s+reg\b|_reg\b|\breg(irep|rep|sub)\b", text)
    for spelling in ("X-Forwarded-Proto", "X_Forwarded-Proto", "X-Forwarded_Host", "X_Forwarded_For", "Forwarded"):
        assert f"http-request del-header {spelling}\n" in text, spelling


def test_bgp_unit_runs_exabgp_unprivileged_with_its_secret_as_a_credential(
    make_config: Callable[..., NodeConfig],
) -> None:
    lines = unit(make_config(), "ober-bgp.service")
    for line in (
        "User=ober-bgp",
        "Group=ober-bgp",
        "LoadCredential=exabgp.conf:/opt/ober/etc/exabgp.conf",
        "ExecStart=/opt/ober/venv/bin/exabgp %d/exabgp.conf",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/opt/ober/run/health",
        "ExecStartPre=+/usr/bin/install -d -m 755 -o ober-bgp -g ober-bgp /opt/ober/run/health",
    ):
        assert line in lines, line
    assert "Environment=exabgp_daemon_user=root" not in lines
    # ober health watches HAProxy's master, another user's process: /proc must show it.
    assert not any(line.startswith("ProtectProc=") for line in lines)
    # A reload refuses an exabgp.conf that changed since the start (ExaBGP would re-read the old copy).
    reload = [line for line in lines if line.startswith("ExecReload=")]
    assert reload[0].startswith(
        "ExecReload=+/bin/sh -c 'cmp -s /opt/ober/etc/exabgp.conf /proc/$MAINPID/root%d/exabgp.conf ||"
    )
    assert reload[1:] == ["ExecReload=/bin/kill -USR1 $MAINPID"]
    # The secret stays in the root-only file, never in the unit.
    assert render_node(make_config(), SECRETS).file(EXABGP_CONF).mode == 0o600
    assert SECRETS["bgp_md5"] not in "\n".join(lines)


@pytest.mark.parametrize(
    ("changes", "home", "private_tmp"),
    [
        ({}, "yes", True),
        ({"certificates": {"pem": "/root/certs/s3.pem"}}, "read-only", True),
        ({"install_path": "/home/ober"}, "no", True),
        ({"certificates": {"pem": "/var/tmp/s3.pem"}}, "yes", False),
    ],
)
def test_the_sandbox_never_hides_the_nodes_own_files(
    make_config: Callable[..., NodeConfig], changes: dict[str, Any], home: str, private_tmp: bool
) -> None:
    config = make_config(**changes)
    for name in ("ober-http.service", "ober-bgp.service", "ober-certs.service"):
        lines = unit(config, name)
        assert f"ProtectHome={home}" in lines, name
        assert ("PrivateTmp=yes" in lines) is private_tmp, name


def exposure(analyze: str, unit_file: Path) -> float:
    """systemd's exposure rating of a unit file, offline (skips where this systemd-analyze cannot)."""
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = (done.stdout.strip().splitlines() or [""])[-1]
    require("Overall exposure level" in last, f"systemd-analyze cannot rate units offline: {done.stderr}")
    return float(last.split(":")[1].split()[0])


def test_systemd_rates_every_service_unit_well_sandboxed(
    make_config: Callable[..., NodeConfig], tmp_path: Path
) -> None:
    """systemd's own exposure rating (0 fully sandboxed .. 10 not at all), offline from the rendered files; it was
    9.6 for each before the units were hardened. The lab test in an nspawn node rates the installed units."""
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is not installed")
    rendered = render_node(make_config(), SECRETS)
    scores = {}
    for name in ("ober-http.service", "ober-bgp.service", "ober-certs.service"):
        target = tmp_path / name
        target.write_text(rendered.file(f"{UNIT_DIR}/{name}").content)
        scores[name] = exposure(str(analyze), target)
    assert scores["ober-http.service"] <= 3.5, scores
    assert scores["ober-bgp.service"] <= 2.5 and scores["ober-certs.service"] <= 2.5, scores


def test_per_source_limits_by_default_and_the_off_switch(make_config: Callable[..., NodeConfig]) -> None:
    def cfg(**haproxy: Any) -> list[str]:
        text = render_node(make_config(haproxy=haproxy), SECRETS).file(HAPROXY_CFG).content
        return [line.strip() for line in text.splitlines()]

    default = cfg(maxconn=50000)
    assert default.count("tcp-request connection track-sc0 src table per_source") == 2  # both VIPs' frontends
    assert default.count("tcp-request connection reject if { sc0_conn_cur gt 1000 }") == 2
    assert not any("sc0_conn_rate" in line for line in default)  # no rate limit unless asked
    assert "stick-table type ip size 50000 expire 20s store conn_cur,conn_rate(10s)" in default
    # After the whitelist (which rejects untracked), before anything HTTP.
    whitelist = default.index(
        "tcp-request connection reject unless { src -f /opt/ober/etc/whitelist/frontend-http.lst }"
    )
    assert whitelist < default.index("tcp-request connection track-sc0 src table per_source")

    rated = cfg(per_source={"connections": 300, "rate": 100, "period": "1m"})
    assert "tcp-request connection reject if { sc0_conn_cur gt 300 }" in rated
    assert "tcp-request connection reject if { sc0_conn_rate gt 100 }" in rated
    assert "stick-table type ip size 100000 expire 120s store conn_cur,conn_rate(60s)" in rated

    off = cfg(per_source={"connections": 0})
    assert not any("per_source" in line or "sc0_" in line for line in off)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"connections": -1}, "haproxy.per_source.connections"),
        ({"connections": 200000}, "haproxy.per_source.connections"),
        ({"rate": "many"}, "haproxy.per_source.rate"),
        ({"period": "0s"}, "haproxy.per_source.period"),
        ({"burst": 5}, "haproxy.per_source"),
    ],
)
def test_bad_per_source_limits_are_one_clear_error(
    make_config: Callable[..., NodeConfig], limits: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(haproxy={"per_source": limits})
    assert message in error.value.message
