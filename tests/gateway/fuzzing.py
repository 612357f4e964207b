"""The live ``effgate serve`` process the fuzz modules run against, and the checks they share.

    test_fuzz_bodies.py    schemathesis on the gateway's own /openapi.json, and hypothesis with
                           hostile raw bodies: deep nesting, huge strings, wrong types in every
                           field, invalid UTF-8, NaN and Infinity, odd content parts
    test_fuzz_headers.py   hostile headers over raw HTTP: long / non-latin-1 / CRLF /
                           non-numeric values, and requests the HTTP parser refuses

Each module gets its own gateway process (``live`` is module-scoped) with client keys, a
provider key and input limits on. Every answer must be below 500, a 4xx must be the OpenAI
error body, and neither the client key (EFFGATE_API_KEYS) nor the provider key (the models'
api_key_env) may appear in any response; the process log must hold no traceback when a module
is done. Examples are bounded (``FUZZ_EXAMPLES``) so each module takes well under a minute on
two cores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, settings

from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import SKILLS, policy_dict
from tests.gateway.serving import SLOW_OK, ServeProcess, serve_process

CLIENT_KEY = "sk-effgate-fuzz-client-7d41c2a9"
PROVIDER_KEY = "sk-provider-fuzz-secret-3b9e0f55"
PROVIDER_ENV = "EFFGATE_FUZZ_PROVIDER_KEY"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
FUZZ_EXAMPLES = 40  # per hypothesis test
SCHEMA_EXAMPLES = 10  # per operation, in schemathesis's fuzzing phase (after its coverage phase)
CHAT, EMB, EXPLAIN, FEEDBACK = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/route/explain",
    "/v1/feedback",
)
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    small_fake: FakeUpstreamHandle,
    big_fake: FakeUpstreamHandle,
) -> Iterator[ServeProcess]:
    """One gateway process for the module: client keys, a provider key, input limits on."""
    # the fakes are shared by the worker's session: clear faults an earlier module scripted
    # (tests reset them as they start, not as they end; an inherited fault opens a circuit)
    small_fake.reset()
    big_fake.reset()
    tmp = tmp_path_factory.mktemp("fuzz")
    model = {"timeouts": SLOW_OK, "api_key_env": PROVIDER_ENV}
    policy = policy_dict(  # route auto (no bar), route routed (bar 0.8: the real estimator)
        small_fake.base_url,
        big_fake.base_url,
        small={**model, "skill": SKILLS["small"]},
        big={**model, "skill": SKILLS["big"]},
        limits={"max_messages": 64, "max_chars": 200_000, "max_tokens": 4096},
    )
    env = {"EFFGATE_API_KEYS": json.dumps({CLIENT_KEY: "fuzz"}), PROVIDER_ENV: PROVIDER_KEY}
    with serve_process(tmp, small_fake, big_fake, policy=policy, **env) as gw:
        yield gw
        log = gw.log_text()
        assert "Traceback" not in log, log[-4000:]
        assert PROVIDER_KEY not in log and CLIENT_KEY not in log


@pytest.fixture(scope="module")
def client(live: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.origin, timeout=30) as c:
        yield c


def check(r: httpx.Response) -> None:
    """Below 500, no traceback or key anywhere in it, and OpenAI-shaped when an error."""
    raw = r.content
    assert r.status_code < 500, (r.status_code, raw[:500])
    assert b"Traceback" not in raw, raw[:500]
    head = b"\n".join(k + b": " + v for k, v in r.headers.raw)
    for secret in (CLIENT_KEY.encode(), PROVIDER_KEY.encode()):
        assert secret not in raw and secret not in head, raw[:500]
    if r.status_code >= 400:
        body = orjson.loads(raw)
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == ERROR_KEYS, err
        assert isinstance(err["message"], str) and isinstance(err["type"], str)
        assert err["param"] is None or isinstance(err["param"], str)
        assert err["code"] is None or isinstance(err["code"], str)


def post(client: httpx.Client, path: str, body: bytes, **headers: Any) -> httpx.Response:
    r = client.post(
        path, content=body, headers={**AUTH, "content-type": "application/json", **headers}
    )
    check(r)
    return r


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **extra}


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
