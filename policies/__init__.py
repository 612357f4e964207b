"""Routing policies: which model serves a request, and why.

- ``policies.schema``   the policy YAML contract (pydantic, version 1)
- ``policies.loader``   YAML with line numbers -> PolicyFile -> CompiledPolicy, readable errors
- ``policies.compile``  cross-checks and the immutable CompiledPolicy; ``needs_difficulty``
- ``policies.engine``   ``decide(policy, RouteInput, LiveStats) -> Decision``; pure and fast
- ``policies.store``    PolicyStore: atomic swap on reload, file watcher
- ``policies.check``    ``effgate policy check FILE...``
- ``policies.replay``   ``effgate eval --policy F --data F.jsonl``: replay a dataset offline

Nothing here imports the gateway, HTTP libraries or Prometheus; ``replay`` alone imports
``router_models`` (lazily).
"""

from __future__ import annotations
