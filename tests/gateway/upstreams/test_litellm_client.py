"""A non-OpenAI provider through litellm: Anthropic's Messages API on a fake server on loopback.

The gateway imports litellm only because this policy names ``provider: anthropic``; the
client still speaks OpenAI (the official SDK), JSON and streaming.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.settings import Settings
from tests.fakes.servers import serve_fake_anthropic
from tests.gateway.conftest import StubEstimator, serve_app

KEY = "sk-ant-fake-123"


@pytest.fixture(scope="module")
def anthropic_gateway(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FAKE_ANTHROPIC_KEY", KEY)
    tmp = tmp_path_factory.mktemp("litellm")
    with serve_fake_anthropic(api_key=KEY) as fake:
        policy = {
            "version": 1,
            "models": [
                {
                    "id": "claude",
                    "provider": "anthropic",
                    "base_url": fake.origin,
                    "upstream_model": "claude-3-5-haiku-20241022",
                    "api_key_env": "FAKE_ANTHROPIC_KEY",
                    "input_usd_per_mtok": 0.8,
                    "output_usd_per_mtok": 4.0,
                    "context_window": 200000,
                    "timeouts": {"connect_s": 2, "first_byte_s": 60, "idle_s": 10, "total_s": 60},
                    "max_retries": 0,
                }
            ],
            "routes": [{"name": "auto", "candidates": ["claude"]}],
            "default_route": "auto",
        }
        path = Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        settings = Settings(policy_path=path, records_dir=Path(tmp) / "records")
        app = create_app(settings, registry=CollectorRegistry(), estimator=StubEstimator())
        with serve_app(app) as origin:
            yield origin, fake
    mp.undo()


def _client(origin: str):
    import openai

    return openai.OpenAI(base_url=origin + "/v1", api_key="unused", max_retries=0, timeout=90)


def test_json_through_litellm_anthropic(anthropic_gateway) -> None:
    origin, fake = anthropic_gateway
    raw = _client(origin).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello anthropic"}], max_tokens=50
    )
    resp = raw.parse()
    assert raw.headers["x-effgate-model"] == "claude"
    assert resp.model == "claude"
    assert "says:" in (resp.choices[0].message.content or "")
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    headers, body = fake.requests[-1]
    assert headers.get("x-api-key") == KEY
    assert body["model"] == "claude-3-5-haiku-20241022"
    expected = (resp.usage.prompt_tokens * 0.8 + resp.usage.completion_tokens * 4.0) / 1e6
    assert float(raw.headers["x-effgate-cost-usd"]) == pytest.approx(expected, rel=1e-6)


def test_stream_through_litellm_anthropic(anthropic_gateway) -> None:
    origin, _ = anthropic_gateway
    stream = _client(origin).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "stream please"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = [], None
    for chunk in stream:
        assert chunk.model == "claude"
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "says:" in "".join(text)
    assert usage is not None and usage.completion_tokens > 0
    assert (usage.model_extra or {}).get("effgate_cost_usd", 0) > 0


def test_wrong_key_is_passed_through_as_401(anthropic_gateway, monkeypatch) -> None:
    origin, _ = anthropic_gateway
    import openai

    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "wrong")
    with pytest.raises(openai.AuthenticationError):
        _client(origin).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
