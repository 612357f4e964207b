"""Suite-wide pytest settings: async tests run on asyncio (the anyio plugin), nothing else.

Each package's own fixtures live in its folder's conftest; this file stays tiny because every
suite (gateway, policies, router_models, deploy) inherits it.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The gateway runs on asyncio (uvloop in production); trio is not a target."""
    return "asyncio"
