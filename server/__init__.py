"""The guardrails sidecar: an OpenAI-compatible proxy that guards every request, moderates streams and audits.

from server import Settings, create_app

app = create_app(Settings(policy="default", upstream_url="http://127.0.0.1:8000/v1", api_key="..."))

Run it with ``guardrails serve`` (or ``python -m server serve``); see :mod:`server.cli`.
"""

from server.app import create_app
from server.settings import KeyEntry, Settings
from server.upstream import HTTPUpstream, TextGeneratorUpstream, Upstream

__all__ = ["create_app", "Settings", "KeyEntry", "Upstream", "HTTPUpstream", "TextGeneratorUpstream"]
