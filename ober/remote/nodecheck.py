"""``haproxy -c`` on a node, over SSH: the check by the HAProxy the nodes run, not this workstation's.

The workstation's HAProxy (if it has one) may be another version than the nodes': a directive one version accepts
and the other refuses then passes here and fails there, or the other way round. ``ober fleet render --check-on
NODE`` renders each node's files here and has NODE's HAProxy check them: the files go to a fresh private directory
on NODE as one tar stream (no secret file among them), the node's own certificate and CA files stand in for the
placeholders when it has them, and the directory is removed whatever happens.
"""

from __future__ import annotations

import io
import secrets as tokens
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ober.config import NodeConfig
from ober.errors import OberError, RenderError
from ober.facts import parse_haproxy_version
from ober.remote.bootstrap_steps import Remote
from ober.render import NODE_USERS, RunAs, paths, render_node
from ober.validate import CheckResult, haproxy_stand_ins, make_placeholder, tool_lines

CHECK_TIMEOUT = 120.0
STAND_IN_GROUP = "ober-stand-in-group"
"""In the stand-in haproxy.cfg: replaced on the node by the group ``nobody`` has there (nogroup or nobody)."""
STAND_IN = RunAs("nobody", STAND_IN_GROUP, "nobody", STAND_IN_GROUP)
# Run as root on the node. $1: the scratch directory (a fresh random name: mkdir refuses one that exists),
# $2: the haproxy.cfg in it; $3, $4, $5: the HAProxy user, its group and the BGP group (HAProxy looks them up: a node
# without them, not bootstrapped yet, checks $2.stand-in, which runs as nobody); then the node paths whose real
# files replace the placeholders when the node has them.
_SCRIPT = r"""
set -u
root=$1; cfg=$2; user=$3; group=$4; bgp_group=$5; shift 5
umask 077
mkdir -m 700 -- "$root" || exit 90
trap 'rm -rf -- "$root"' EXIT
tar -x -f - -C "$root" || exit 91
for real; do
  if [ -f "$real" ]; then cp -- "$real" "$root$real" && echo "ober-real: $real"
  elif [ -d "$real" ]; then rm -rf -- "$root$real" && cp -a -- "$real" "$root$real" && echo "ober-real: $real"
  fi
done
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$haproxy" ] || { echo "ober-missing: haproxy"; exit 92; }
echo "ober-version: $("$haproxy" -v 2>&1 | head -n 1)"
if ! { getent passwd "$user" && getent group "$group" && getent group "$bgp_group"; } >/dev/null 2>&1; then
  nobody=nobody
  getent group nogroup >/dev/null 2>&1 && nobody=nogroup
  sed "s/ober-stand-in-group/$nobody/g" "$cfg.stand-in" >"$cfg" || exit 91
  echo "ober-stand-in: nobody"
fi
OBER_STATS_PASSWORD=placeholder "$haproxy" -c -f "$cfg" 2>&1
"""


def check_haproxy_on(
    conn: Remote, node: str, config: NodeConfig, secrets: Mapping[str, str] | None = None
) -> CheckResult:
    """Run ``haproxy -c`` on ``node`` (through ``conn``) on the files rendered here for ``config``.

    Raises:
        RenderError: the node's HAProxy rejected the config (its first alert quoted), or it has none.
        OberError: the node could not be reached or the check could not run there.
    """
    root = f"/tmp/ober-check-{tokens.token_hex(8)}"  # noqa: S108 - a fresh name, created with mkdir -m 700
    stand_ins = haproxy_stand_ins(config)
    archive = _archive(config, secrets or {}, root, stand_ins)
    cfg = paths(config, root)["haproxy_cfg"]
    users = (NODE_USERS.haproxy_user, NODE_USERS.haproxy_group, NODE_USERS.bgp_group)
    argv = ["sh", "-c", _SCRIPT, "ober-check", root, cfg, *users, *(real for real, _ in stand_ins)]
    done = conn.run(argv, CHECK_TIMEOUT, stdin=archive)
    output = done.stdout.replace(root, "")
    if done.returncode == 92:
        raise RenderError(f"{node} has no HAProxy to check with", f"bootstrap {node} first, or check on another node")
    if done.returncode in (90, 91) or "ober-version:" not in output:
        why = (done.stderr.strip() or output.strip() or f"exit {done.returncode}").splitlines()[-1]
        raise OberError(f"{node}: could not run haproxy -c there: {why}")
    version_line = next(line for line in output.splitlines() if line.startswith("ober-version:"))
    real = {line.removeprefix("ober-real: ") for line in output.splitlines() if line.startswith("ober-real: ")}
    result = CheckResult(
        tool="haproxy",
        host=node,
        version=parse_haproxy_version(version_line),
        placeholders=[path for path, _ in stand_ins if path not in real],
    )
    if "ober-stand-in: nobody" in output.splitlines():
        result.placeholders.append(f"users {', '.join(NODE_USERS.users)} (checked as nobody)")
    if done.returncode != 0:
        alerts = tool_lines(output, "[ALERT]") or output.strip().splitlines()[-1:]
        raise RenderError(
            f"haproxy -c on {node} (HAProxy {result.version or '?'}) rejected {paths(config)['haproxy_cfg']}: "
            f"{alerts[0]}",
            "fix the config value it names; see 'haproxy -c' output for more",
        )
    result.warnings = tool_lines(output, "[WARNING]")
    return result


def _archive(config: NodeConfig, secrets: Mapping[str, str], root: str, stand_ins: list[tuple[str, str]]) -> bytes:
    """The node's rendered files as seen from ``root``, without secret ones, plus placeholders: a tar stream."""
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in render_node(config, secrets, root=root).files:
            if item.mode & 0o077 == 0:
                continue  # secret files (exabgp.conf's MD5 password, secrets.env): haproxy -c needs none of them
            _add(tar, item.path, item.content.encode(), item.mode, now)
        cfg = paths(config)["haproxy_cfg"]
        stand_ins_cfg = render_node(config, secrets, root=root, run_as=STAND_IN).files
        [stand_in] = [item for item in stand_ins_cfg if item.path == cfg]
        _add(tar, f"{cfg}.stand-in", stand_in.content.encode(), stand_in.mode, now)
        with tempfile.TemporaryDirectory() as scratch:
            for real, make in stand_ins:
                make_placeholder(Path(scratch) / real.lstrip("/"), make)
            for path in sorted(Path(scratch).rglob("*")):
                if path.is_file():
                    _add(tar, "/" + str(path.relative_to(scratch)), path.read_bytes(), 0o600, now)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, path: str, data: bytes, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, mtime
    tar.addfile(info, io.BytesIO(data))
