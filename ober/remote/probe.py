"""A request through a node's own S3 frontend, made on the node: TLS, HAProxy and an RGW answering, end to end.

The roll's verify asks the node what it thinks (`ober status`); this asks the data path. It runs on the node (the
VIPs are bound there, so the request never leaves it and cannot land on another ECMP member) with the node venv's
Python and only the standard library, so it does not depend on the node's ober version. A status below 500 is a
pass: HAProxy answered and did not fail for want of a backend (RGW answers an anonymous ``GET /`` itself).
"""

from __future__ import annotations

import json

from ober.config import NodeConfig
from ober.runner import Runner

PROBE_TIMEOUT = 10.0

_SCRIPT = """
import http.client, json, ssl, sys
out = {}
for vip in sys.argv[1:]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the path is probed here; certificates are checked by `ober test`
    try:
        conn = http.client.HTTPSConnection(vip, 443, timeout=5, context=context)
        conn.request("GET", "/", headers={"Connection": "close"})
        out[vip] = conn.getresponse().status
        conn.close()
    except Exception as exc:
        out[vip] = f"{exc.__class__.__name__}: {exc}"
print(json.dumps(out))
"""


def probe_vips(conn: Runner, config: NodeConfig, timeout: float = PROBE_TIMEOUT) -> list[str]:
    """What is wrong with a request through each of the node's VIPs, one phrase each (empty: every VIP answers)."""
    vips = [vip.address for vip in config.vips]
    if not vips:
        return []
    python = f"{config.install_path}/venv/bin/python"
    result = conn.run([python, "-c", _SCRIPT, *vips], timeout)
    if not result.ok:
        return [f"probe through the VIPs did not run: {result.last_line()}"]
    return judge(result.stdout, vips)


def judge(output: str, vips: list[str]) -> list[str]:
    """The probe script's JSON answer → problems (a VIP missing from the answer is one)."""
    try:
        answers = json.loads(output)
    except ValueError:
        return ["probe through the VIPs answered no JSON"]
    if not isinstance(answers, dict):
        return ["probe through the VIPs answered no JSON object"]
    problems = []
    for vip in vips:
        status = answers.get(vip)
        if isinstance(status, int) and not isinstance(status, bool) and status < 500:
            continue
        what = f"HTTP {status}" if isinstance(status, int) else str(status or "no answer")[:200]
        problems.append(f"GET https://{vip}/ through this node: {what}")
    return problems
