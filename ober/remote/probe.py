"""A request through a node's own S3 frontend, made on the node: TLS, HAProxy and an RGW answering, end to end.

The roll's verify asks the node what it thinks (`ober status`); this asks the data path. It runs on the node (the
VIPs are bound there, so the request never leaves it and cannot land on another ECMP member) with the node venv's
Python and only the standard library, so it does not depend on the node's ober version. A status below 500 is a
pass: HAProxy answered and did not fail for want of a backend (RGW answers an anonymous ``GET /`` itself). TLS is
verified against the node's own certificate: a VIP serving another one fails the probe.
"""

from __future__ import annotations

import json

from ober.config import NodeConfig
from ober.render import paths
from ober.runner import Runner

PROBE_TIMEOUT = 10.0
HTTPS_PORT = 443

# argv: the node's certificate (a PEM file or a directory of them), the port, then the VIPs. The node's own
# certificates are the only trust anchors (partial chain: a self-signed or mid-chain one is enough), so the probe
# fails when a VIP serves anything else (another host's certificate, an expired one); the hostname is not checked:
# the VIPs are addressed by IP, and the certificate names the service.
_SCRIPT = """
import http.client, json, os, re, ssl, sys
crt, port, vips = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
files = [crt]
if os.path.isdir(crt):
    files = [os.path.join(crt, n) for n in sorted(os.listdir(crt)) if not n.endswith((".key", ".ocsp", ".sctl"))]
blocks = []
for name in files:
    try:
        with open(name, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        continue
    blocks += re.findall(r"-----BEGIN CERTIFICATE-----[\\s\\S]*?-----END CERTIFICATE-----", text)
out = {}
for vip in vips:
    if not blocks:
        out[vip] = "no certificate in " + crt + " to verify the VIP against"
        continue
    try:
        context = ssl.create_default_context(cadata="\\n".join(blocks))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False
        conn = http.client.HTTPSConnection(vip, port, timeout=5, context=context)
        conn.request("GET", "/", headers={"Connection": "close"})
        out[vip] = conn.getresponse().status
        conn.close()
    except Exception as exc:
        out[vip] = f"{exc.__class__.__name__}: {exc}"
print(json.dumps(out))
"""


def probe_argv(python: str, config: NodeConfig, port: int = HTTPS_PORT) -> list[str]:
    """The command that probes every VIP of ``config`` on the node (run with the node venv's ``python``)."""
    crt = config.certificates.crt_path(config.install_path)
    return [python, "-c", _SCRIPT, crt, str(port), *(vip.address for vip in config.vips)]


def probe_vips(conn: Runner, config: NodeConfig, timeout: float = PROBE_TIMEOUT) -> list[str]:
    """What is wrong with a request through each of the node's VIPs, one phrase each (empty: every VIP answers).

    The TLS certificate each VIP serves must be the node's own (``certificates.pem``, or its ACME directory).
    """
    vips = [vip.address for vip in config.vips]
    if not vips:
        return []
    result = conn.run(probe_argv(paths(config)["python"], config), timeout)
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
