"""The fake Anthropic Messages API speaks what litellm's anthropic provider expects."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.servers import FakeAnthropicHandle, serve_fake_anthropic

# FIX: litellm's streaming types trip a pydantic UserWarning (TypedDict `ReadOnly` items);
# filterwarnings=error would turn that third-party warning into a failure.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item .* is using the `ReadOnly` qualifier:UserWarning"
)
KEY = "sk-ant-test"
MODEL = "anthropic/claude-3-5-haiku-20241022"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def anthropic() -> Iterator[FakeAnthropicHandle]:
    with serve_fake_anthropic(api_key=KEY, models=("claude-3-5-haiku-20241022",)) as fake:
        yield fake


@pytest.fixture(scope="module")
def litellm() -> Any:
    # NOTE: without this litellm downloads its price map at import (no network here).
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    return litellm


def test_litellm_json(anthropic: FakeAnthropicHandle, litellm: Any) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]

    async def run() -> Any:
        try:
            return await litellm.acompletion(
                model=MODEL,
                api_base=anthropic.base_url,
                api_key=KEY,
                messages=messages,
                max_tokens=64,
            )
        finally:  # litellm caches its HTTP clients: close them on the loop that opened them
            await litellm.close_litellm_async_clients()

    out = asyncio.run(run())
    content = out.choices[0].message.content
    assert content.startswith("claude-3-5-haiku-20241022 says: hi there hi there")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 4
    assert out.usage.completion_tokens == len(content.split()) == 16
    headers, body = anthropic.requests[-1]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"]
    assert body["system"][0]["text"] == "be brief" and body["max_tokens"] == 64


def test_litellm_stream(anthropic: FakeAnthropicHandle, litellm: Any) -> None:
    async def run() -> list[Any]:
        stream = await litellm.acompletion(
            model=MODEL,
            api_base=anthropic.base_url,
            api_key=KEY,
            messages=[{"role": "user", "content": "stream this"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            return [chunk async for chunk in stream]
        finally:
            await litellm.close_litellm_async_clients()

    chunks = asyncio.run(run())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "claude-3-5-haiku-20241022 says: stream this stream"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    usage = next(c.usage for c in reversed(chunks) if getattr(c, "usage", None))
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 5)


def test_wire_format(anthropic: FakeAnthropicHandle) -> None:
    url = f"{anthropic.base_url}/v1/messages"
    body = {
        "model": "claude-3-5-haiku-20241022",
        "max_tokens": 3,
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}]}],
    }
    raw = httpx.post(url, json=body, headers=HEADERS).text
    blocks = [b.split("\n") for b in raw.strip("\n").split("\n\n")]
    names = [b[0].removeprefix("event: ") for b in blocks]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [json.loads(b[1].removeprefix("data: ")) for b in blocks]
    assert all(d["type"] == n for d, n in zip(data, names, strict=True))
    assert data[0]["message"]["usage"]["input_tokens"] == 2
    assert data[3]["delta"] == {"type": "text_delta", "text": "claude-3-5-haiku-20241022"}
    assert data[-2]["delta"]["stop_reason"] == "max_tokens"
    assert data[-2]["usage"] == {"output_tokens": 3}
    whole = httpx.post(url, json={**body, "stream": False, "max_tokens": 100}, headers=HEADERS)
    assert whole.json()["stop_reason"] == "end_turn" and whole.json()["type"] == "message"


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": KEY}, 401, "authentication_error"),
    ],
)
def test_auth_errors(
    anthropic: FakeAnthropicHandle, headers: dict[str, str], status: int, kind: str
) -> None:
    body = {"model": "claude-3-5-haiku-20241022", "max_tokens": 3, "messages": [{"role": "user"}]}
    r = httpx.post(f"{anthropic.base_url}/v1/messages", json=body, headers=headers)
    assert r.status_code == status
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind


def test_request_errors(anthropic: FakeAnthropicHandle) -> None:
    url = f"{anthropic.base_url}/v1/messages"
    good = {"model": "claude-3-5-haiku-20241022", "max_tokens": 3, "messages": [{"role": "user"}]}
    cases: list[tuple[Any, int]] = [
        ({**good, "max_tokens": None}, 400),
        ({**good, "model": "claude-other"}, 404),
        ({**good, "messages": []}, 400),
        ({**good, "model": 3}, 400),
        ([good], 400),
    ]
    for body, status in cases:
        assert httpx.post(url, json=body, headers=HEADERS).status_code == status, body
    assert httpx.post(url, content=b"{", headers=HEADERS).status_code == 400
    assert httpx.get(url, headers=HEADERS).status_code == 405
    assert httpx.post(f"{anthropic.base_url}/v1/other", headers=HEADERS).status_code == 404
