"""Journey 1 with LangChain: ``ChatOpenAI`` pointed at the gateway keeps working unchanged.

JSON, streaming, and a tool-calling round trip through ``bind_tools``, against the gateway
under real uvicorn in front of the fake upstreams.
"""

from __future__ import annotations

import langchain_openai
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import Gateway


def _llm(gateway: Gateway, **kw: object) -> langchain_openai.ChatOpenAI:
    return langchain_openai.ChatOpenAI(
        base_url=gateway.v1, api_key="sk-test", model="auto", max_retries=0, **kw
    )


def test_invoke_reaches_the_routed_model(gateway: Gateway, small: FakeUpstreamHandle) -> None:
    msg = _llm(gateway).invoke("hello from langchain")
    assert "says:" in str(msg.content)
    assert msg.response_metadata["model_name"] == "small"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0
    assert small.stats["recent"][-1]["body"]["model"] == "mock-small"


def test_stream_yields_chunks_and_usage(gateway: Gateway) -> None:
    chunks = list(_llm(gateway, stream_usage=True).stream("stream please"))
    text = "".join(str(c.content) for c in chunks)
    assert "says:" in text and len(chunks) > 3
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_tool_calling_round_trip(gateway: Gateway) -> None:
    llm = _llm(gateway).bind_tools([get_weather])
    question = HumanMessage("what is the weather in Paris?")
    first = llm.invoke([question])
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    call = first.tool_calls[0]
    result = get_weather.invoke(call["args"])
    final = llm.invoke([question, first, ToolMessage(result, tool_call_id=call["id"])])
    assert not final.tool_calls
    assert "sunny" in str(final.content)
