"""ober: an S3 ingress for Ceph RGW clusters (HAProxy + ExaBGP per node, ECMP across nodes).

For scripting::

    from ober import load_inventory, render_node
    for node in load_inventory("inventory/example.yaml").nodes:
        files = render_node(node.config, secrets)
"""

from __future__ import annotations

from ober.config import NodeConfig, dump_config, load_config, parse_node_config
from ober.errors import ConfigError, OberError, RenderError, SecretsError
from ober.hostlists import collect, expand
from ober.inventory import Inventory, InventoryNode, load_inventory, resolve_inventory
from ober.render import Rendered, RenderedFile, render_node
from ober.resolve import resolve_whitelists
from ober.secrets import load_secrets
from ober.validate import check_exabgp, check_haproxy

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Inventory",
    "InventoryNode",
    "NodeConfig",
    "OberError",
    "RenderError",
    "Rendered",
    "RenderedFile",
    "SecretsError",
    "__version__",
    "check_exabgp",
    "check_haproxy",
    "collect",
    "dump_config",
    "expand",
    "load_config",
    "load_inventory",
    "load_secrets",
    "parse_node_config",
    "render_node",
    "resolve_inventory",
    "resolve_whitelists",
]
