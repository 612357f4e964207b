"""Suite-wide pytest settings: async tests run on asyncio (the anyio plugin), nothing else.

Each package's own fixtures live in its folder's conftest; this file stays tiny because every
suite (gateway, policies, router_models, deploy) inherits it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The gateway runs on asyncio (uvloop in production); trio is not a target."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage after every test, so a leaked socket, file or response fails the test
    that leaked it (``ResourceWarning`` is an error here) rather than whichever test the
    garbage collector happens to run in."""
    yield
    gc.collect()
