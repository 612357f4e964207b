"""Fixtures for the policies tests: write a policy file, compile policy text."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from policies.compiled import CompiledPolicy
from policies.errors import PolicyLoadError
from policies.loader import build_policy

MINIMAL = """\
version: 1
models:
  - {id: small, provider: openai, base_url: "http://127.0.0.1:9001/v1", upstream_model: mock-small, api_key_env: SMALL_API_KEY, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60, context_window: 128000}
  - {id: big, provider: openai, base_url: "http://127.0.0.1:9002/v1", upstream_model: mock-big, input_usd_per_mtok: 2.50, output_usd_per_mtok: 10.00, context_window: 128000}
routes:
  - name: auto
    candidates: [small, big]
default_route: auto
"""  # noqa: E501  (the minimal file from the issue, verbatim)


def the_error(text: str) -> str:
    """The one error a policy text (as file ``policy.yaml``) fails to load with."""
    with pytest.raises(PolicyLoadError) as info:
        build_policy(text.encode(), path="policy.yaml", skills={}, discrimination=1.0)
    [error] = info.value.errors
    return error


THREE = """\
version: 1
models:
  - {id: small, provider: openai, base_url: "http://s/v1", input_usd_per_mtok: 0.1,
     output_usd_per_mtok: 0.4, context_window: 8000, skill: 0.0,
     capabilities: [streaming]}
  - {id: mid, provider: openai, base_url: "http://m/v1", input_usd_per_mtok: 0.5,
     output_usd_per_mtok: 2.0, context_window: 32000, skill: 1.0,
     capabilities: [streaming, tools]}
  - {id: big, provider: openai, base_url: "http://b/v1", input_usd_per_mtok: 3.0,
     output_usd_per_mtok: 12.0, context_window: 128000, skill: 2.0}
routes:
  - name: chat
    candidates: [small, mid, big]
    quality_bar: 0.8
    min_quality_bar: 0.5
    max_quality_bar: 0.95
  - name: fixed
    candidates: [mid, big, small]
default_route: chat
"""

PolicyFactory = Callable[..., CompiledPolicy]


@pytest.fixture
def compile_text() -> PolicyFactory:
    """compile_text(yaml, skills={}, discrimination=1.0) -> CompiledPolicy."""

    def build(
        text: str, skills: Mapping[str, float] | None = None, discrimination: float = 1.0
    ) -> CompiledPolicy:
        return build_policy(
            text.encode(), path="policy.yaml", skills=skills or {}, discrimination=discrimination
        )

    return build


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(text, name="policy.yaml") -> the path of a new file under tmp_path."""

    def put(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return put
