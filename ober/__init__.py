"""ober: an S3 ingress for Ceph RGW clusters (HAProxy + ExaBGP per node, ECMP across nodes)."""

from __future__ import annotations

__version__ = "0.1.0"
