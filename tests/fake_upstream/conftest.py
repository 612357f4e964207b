"""The fake OpenAI upstream, driven over loopback with httpx, raw sockets and the openai SDK."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream

MODELS = ("m-small", "m-big")
_PROPS = {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}}
_PROPS |= {"hourly": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}
_WEATHER_ARGS = {"type": "object", "properties": {**_PROPS, "optional": {"type": "number"}}}
_WEATHER_ARGS["required"] = list(_PROPS)
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": _WEATHER_ARGS},
}
SEARCH: Any = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstreamHandle]:
    with serve_fake_upstream(models=MODELS) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstreamHandle) -> FakeUpstreamHandle:
    server.reset()
    return server


@pytest.fixture
def http(fake: FakeUpstreamHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(fake: FakeUpstreamHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=10)


def chat(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "m-small", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    events = raw[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
