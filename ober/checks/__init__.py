"""Node checks for ``ober doctor`` and ``ober test``: each looks at one real thing and says how to fix what it finds.

A check never raises for a problem it found: it returns :class:`ober.checks.base.Check` results, so one report lists
every problem at once. What tests need to steer is passed in (the os-release text, the uid, the clock, the resolver,
the BGP port, ``ober status`` data, a CA file); everything else is real: sockets, HTTP(S), the ``openssl`` CLI,
``haproxy -c`` and ``exabgp validate``.

By concern:

* :mod:`ober.checks.base`: :class:`Check`, side-by-side probes, masking secret values.
* :mod:`ober.checks.host`: Python, root, the distribution, the host's own name, ober's units, HAProxy answering.
* :mod:`ober.checks.config`: ``ober.yaml``, the files it renders, the stats page's exposure.
* :mod:`ober.checks.bgp`: TCP (MD5) to each neighbor, the BGP sessions, each VIP's announcement.
* :mod:`ober.checks.rgw`: each RGW server's health check, the SSE-C round trip.
* :mod:`ober.checks.keepalive`: whether an RGW stalls answers on kept-alive connections (`backends.<group>.reuse`).
* :mod:`ober.certs`: the served certificates (expiry, key, chain); also what ``ober certs reload`` refuses.
* :mod:`ober.checks.doctor`: ``run_doctor`` and ``run_test``, the checks of each command in order.
"""
