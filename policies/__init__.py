"""Routing policies: which model serves a request, and why.

- ``policies.schema``   the policy YAML contract (pydantic, version 1)
- ``policies.loader``   YAML with line numbers -> PolicyFile -> CompiledPolicy, readable errors
- ``policies.compile``  cross-checks: PolicyFile -> CompiledPolicy (``compile_policy``)
- ``policies.compiled`` the immutable CompiledPolicy and its lookups; ``needs_difficulty``
- ``policies.engine``   ``decide(policy, RouteInput, LiveStats) -> Decision``; pure and fast
- ``policies.store``    PolicyStore: atomic swap on reload, file watcher
- ``policies.check``    ``effgate policy check FILE...``
- ``policies.replay``   ``effgate eval --policy F --data F.jsonl``: replay a dataset offline

Nothing here imports the gateway, HTTP libraries or Prometheus. Of ``router_models``, the
engine uses only ``router_models.irt`` (the one IRT formula); the offline tools (``check``,
``replay``, ``replay_data``) read artifacts and labelled data through it.
"""

from __future__ import annotations
