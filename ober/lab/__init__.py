"""The local lab: a simulated fleet on this machine (node image, namespaces, router, RGW)."""
