"""What a benchmark run sends, and to whom: scenarios, targets, the policy and request bodies.

Two fake upstreams stand in for model servers: ``fast`` answers JSON at once (so added latency
is the gateway's own), ``paced`` streams its tokens at a fixed rate (so time to first token and
total stream time mean what they do with a real model). Each scenario is sent to every target
that can serve it, with the same prompt:

| scenario            | direct (fake)        | gateway       | litellm            |
|---------------------|----------------------|---------------|--------------------|
| json / passthrough  | mock-small on fast   | small         | mock-small         |
| json / routed       | mock-small on fast   | auto (bar)    | -                  |
| stream / passthrough| mock-small on paced  | small-paced   | mock-small-paced   |
| stream / routed     | mock-small on paced  | auto-paced    | -                  |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

Target = Literal["direct", "gateway", "litellm"]
Kind = Literal["json", "stream"]
Path_ = Literal["passthrough", "routed"]

QUALITY_BAR = 0.7
PROMPT = (
    "You are reviewing a pull request for a Python web service. The change moves request "
    "validation from the handlers into a shared middleware, adds a cache in front of the "
    "database lookups, and rewrites two SQL queries. List the three riskiest parts of this "
    "change, explain why each is risky, and suggest one test that would catch a regression in "
    "each. Keep the answer short."
)
MESSAGES = [
    {"role": "system", "content": "You are a careful senior engineer."},
    {"role": "user", "content": PROMPT},
]


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: Kind
    path: Path_
    # streams from the paced fake (TTFT and stream time mean what they do with a model), or
    # from the fast one (saturation: how many streams a second the gateway can relay)
    paced: bool = True

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.path}"

    @property
    def stream(self) -> bool:
        return self.kind == "stream"

    def model(self, target: Target) -> str | None:
        """The model name this target is asked for; None when the target has no such path."""
        paced = "-paced" if self.stream and self.paced else ""
        if target == "direct":
            return "mock-small"
        if target == "litellm":
            return None if self.path == "routed" else f"mock-small{paced}"
        return f"auto{paced}" if self.path == "routed" else f"small{paced}"

    def body(self, target: Target) -> bytes:
        model = self.model(target)
        assert model is not None
        obj: dict[str, object] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
        if self.stream:
            # asked of every target, so the upstream sends the same events whoever calls it
            obj["stream"] = True
            obj["stream_options"] = {"include_usage": True}
        return orjson.dumps(obj)


def scenarios(*, stream: bool, routed: bool) -> list[Scenario]:
    kinds: list[Kind] = ["json", "stream"] if stream else ["json"]
    paths: list[Path_] = ["passthrough", "routed"] if routed else ["passthrough"]
    return [Scenario(k, p) for k in kinds for p in paths]


def policy_yaml(fast_port: int, paced_port: int) -> str:
    """Four catalog models (two per fake) and two routes with a quality bar."""
    models = []
    for suffix, port in (("", fast_port), ("-paced", paced_port)):
        for size, price_in, price_out, skill in (
            ("small", 0.15, 0.6, 0.5),
            ("large", 2.5, 10.0, 2.0),
        ):
            models.append(
                f"  - {{id: {size}{suffix}, provider: openai, "
                f'base_url: "http://127.0.0.1:{port}/v1", upstream_model: mock-{size}, '
                f"input_usd_per_mtok: {price_in}, output_usd_per_mtok: {price_out}, "
                f"context_window: 128000, skill: {skill}, max_retries: 0}}"
            )
    routes = [
        f"  - {{name: auto, candidates: [small, large], quality_bar: {QUALITY_BAR}}}",
        f"  - {{name: auto-paced, candidates: [small-paced, large-paced], "
        f"quality_bar: {QUALITY_BAR}}}",
    ]
    return "\n".join(
        ["version: 1", "models:", *models, "routes:", *routes, "default_route: auto", ""]
    )


def litellm_config(fast_port: int, paced_port: int) -> str:
    """A LiteLLM proxy config serving the same two upstream paths as the gateway's passthrough."""
    lines = ["model_list:"]
    for name, port in (("mock-small", fast_port), ("mock-small-paced", paced_port)):
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            "      model: openai/mock-small",
            f"      api_base: http://127.0.0.1:{port}/v1",
            "      api_key: x",
        ]
    lines += ["litellm_settings:", "  telemetry: false", "  set_verbose: false", ""]
    return "\n".join(lines)
