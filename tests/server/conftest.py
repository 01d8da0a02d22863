"""The sidecar's fixtures (defined in sidecar.py): a stub upstream, the proxy on loopback, an openai client."""

from sidecar import client, proxy, stub  # noqa: F401
