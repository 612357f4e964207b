"""Tenants and virtual keys, budgets and limits, through a live gateway and the official SDK.

The tenants file is the issue's form, written as an operator would; keys are made with
``effgate keys new`` and only their digests go in the file.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.budgets import Ledger
from gateway.cli import main as effgate
from gateway.errors import BudgetExceeded
from gateway.meters import meters
from gateway.tenants import Tenant, build_tenants, check, digest, new_key
from policies.errors import PolicyLoadError
from tests.fakes.servers import FakeUpstreamHandle
from tests.gateway.conftest import Gateway, GatewayFactory, clear_of_minute_boundary, wait_until

USER: list[Any] = [{"role": "user", "content": "hello there world"}]

ISSUE_FORM = """\
version: 1
tenants:
  - name: team-a
    keys_sha256: ["{a}"]
    routes: [auto, code]          # optional; default: all routes and models
    quality_bar: {{min: 0.6, max: 0.9}}   # optional bounds on what requests may ask
    budget: {{usd_per_day: 25.0, usd_per_month: 500.0}}
    limits: {{rpm: 600, tpm: 200000, max_tokens: 4096}}
    on_budget_pressure: {{at: 0.8, quality_bar: 0.6}}  # optional: near the limit, route cheaper
admin_keys_sha256: ["{admin}"]
"""


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    body = resp.json() if hasattr(resp, "json") else resp
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


class Keys:
    def __init__(self) -> None:
        self.a, self.b, self.admin = new_key(), new_key(), new_key()


def tenants_yaml(keys: Keys, **team_b: Any) -> dict[str, Any]:
    b = {"name": "team-b", "keys_sha256": [digest(keys.b)], **team_b}
    return {
        "version": 1,
        "tenants": [
            {"name": "team-a", "keys_sha256": [digest(keys.a)], "routes": ["auto"]},
            b,
        ],
        "admin_keys_sha256": [digest(keys.admin)],
    }


def start(
    make_gateway: GatewayFactory, tmp_path: Path, data: dict[str, Any], **settings: Any
) -> tuple[Gateway, Path]:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return make_gateway(tenants_path=path, **settings), path


# ------------------------------------------------------------------ the file


def test_the_issues_form_loads_as_written(tmp_path: Path) -> None:
    a, admin = new_key(), new_key()
    text = ISSUE_FORM.format(a=digest(a), admin=digest(admin))
    tenants = build_tenants(text.encode(), path="tenants.yaml")
    t = tenants.by_digest[digest(a)]
    assert (t.name, t.bar_min, t.bar_max) == ("team-a", 0.6, 0.9)
    assert t.routes == frozenset({"auto", "code"})
    assert (t.usd_per_day, t.usd_per_month, t.rpm, t.tpm, t.max_tokens) == (
        25.0,
        500.0,
        600,
        200000,
        4096,
    )
    assert (t.pressure_at, t.pressure_bar) == (0.8, 0.6)
    assert tenants.admin == {digest(admin)}
    assert a not in text and digest(a) in text


DUPLICATE = '  - {name: team-a, keys_sha256: ["' + "0" * 64 + '"]}\n'
ADMIN_TOO = 'tenants:\n  - {name: x, keys_sha256: ["ADMIN"]}\n'
FILE_ERRORS = [
    (
        lambda s: s.replace('keys_sha256: ["', 'keys_sha256: ["zz'),
        r"tenants.yaml:4: tenants\[0\]\.keys_sha256\[0\]: String should match",
    ),
    (
        lambda s: s.replace("rpm: 600", "rpm: -1"),
        r"tenants.yaml:8: tenants\[0\]\.limits\.rpm: Input should be greater than 0",
    ),
    (
        lambda s: s.replace("routes:", "routez:"),
        r"tenants.yaml:5: tenants\[0\]\.routez: unknown field",
    ),
    (
        lambda s: s.replace("quality_bar: 0.6}", "quality_bar: 0.5}"),
        r"tenants.yaml:\d+: tenants\[0\]: on_budget_pressure.quality_bar \(0.5\) is outside",
    ),
    (
        lambda s: s.replace("min: 0.6, max: 0.9", "min: 0.9, max: 0.6"),
        r"tenants.yaml:6: tenants\[0\]\.quality_bar: min \(0.9\) is above max",
    ),
    (
        lambda s: s.replace("version: 1", "version: 2"),
        r"tenants.yaml:1: version: Input should be 1",
    ),
    (
        lambda s: s.replace("admin_keys_sha256", DUPLICATE + "admin_keys_sha256"),
        r"tenants.yaml:\d+: tenants\[1\]\.name: tenant 'team-a' is already defined",
    ),
    (
        lambda s: s.replace("tenants:\n", ADMIN_TOO),
        r"admin_keys_sha256\[0\]: an admin key must not also be a tenant's key",
    ),
    (lambda s: "tenants: [\n", r"tenants.yaml:\d+: invalid YAML"),
    (lambda s: "", r"tenants.yaml:1: the file is empty"),
]


@pytest.mark.parametrize(("edit", "expected"), FILE_ERRORS)
def test_file_errors_name_the_line(edit: Any, expected: str) -> None:
    admin = digest(new_key())
    text = edit(ISSUE_FORM.format(a=digest(new_key()), admin=admin)).replace("ADMIN", admin)
    with pytest.raises(PolicyLoadError) as info:
        build_tenants(text.encode(), path="tenants.yaml")
    assert re.search(expected, str(info.value)), str(info.value)


def test_keys_new_prints_a_key_once_and_the_line_that_admits_it(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    assert effgate(["keys", "new", "--tenant", "team-a"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"(eg-[A-Za-z0-9_-]{40,})", out)
    line = re.search(r'keys_sha256: \["([0-9a-f]{64})"\]', out)
    assert key and line and line.group(1) == digest(key.group(1))
    path = tmp_path / "t.yaml"
    path.write_text(f"version: 1\ntenants:\n  - name: team-a\n    {line.group(0)}\n")
    assert check(str(path)) == []
    assert effgate(["keys", "check", str(path)]) == 0
    path.write_text("version: 1\ntenants:\n  - name: team-a\n")
    assert effgate(["keys", "check", str(path)]) == 1
    assert "t.yaml:3: tenants[0].keys_sha256: Field required" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(key.group(1) + "\n"))
    assert effgate(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == line.group(1)


# ------------------------------------------------------------------ keys and permissions


def test_keys_routes_and_admin(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle
) -> None:
    keys = Keys()
    gw, _ = start(make_gateway, tmp_path, tenants_yaml(keys), api_keys={"sk-plain": "legacy"})
    ok = gw.sdk(api_key=keys.a).chat.completions.create(model="auto", messages=USER)
    assert ok.choices[0].message.content
    # EFFGATE_API_KEYS keeps working beside the file
    gw.sdk(api_key="sk-plain").chat.completions.create(model="big", messages=USER)
    with pytest.raises(openai.AuthenticationError) as unknown:
        gw.sdk(api_key="eg-not-a-key").chat.completions.create(model="auto", messages=USER)
    assert_error(unknown.value.response, 401, "invalid_api_key")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        gw.sdk(api_key=keys.a).chat.completions.create(model="big", messages=USER)
    err = assert_error(denied.value.response, 403, "permission_denied")
    assert "team-a" in err["message"] and err["param"] == "model"
    with gw.http() as http:
        # a route override is a route like any other
        r = http.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER},
            headers={"authorization": f"Bearer {keys.a}", "x-effgate-route": "routed"},
        )
        assert_error(r, 403, "permission_denied")
        r = http.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": USER},
            headers={"authorization": f"Bearer {keys.admin}"},
        )
        assert_error(r, 403, "permission_denied")
        r = http.get("/v1/admin/tenants", headers={"authorization": f"Bearer {keys.a}"})
        assert_error(r, 403, "permission_denied")
        r = http.get("/v1/admin/tenants")
        assert_error(r, 401, "invalid_api_key")
        r = http.get("/v1/admin/tenants", headers={"authorization": f"Bearer {keys.admin}"})
        assert r.status_code == 200
        names = [t["name"] for t in r.json()["data"]]
        assert names == ["legacy", "team-a", "team-b"]
        a_auth = {"authorization": f"Bearer {keys.a}"}
        # a tenant limited to routes sees only those in the catalog
        assert [m["id"] for m in http.get("/v1/models", headers=a_auth).json()["data"]] == ["auto"]
        assert http.get("/v1/models/big", headers=a_auth).status_code == 404
        b_ids = {
            m["id"]
            for m in http.get("/v1/models", headers={"authorization": f"Bearer {keys.b}"}).json()[
                "data"
            ]
        }
        assert {"auto", "routed", "small", "big"} <= b_ids
        me = http.get("/v1/tenants/me", headers={"authorization": f"Bearer {keys.a}"}).json()
        assert me["name"] == "team-a" and me["routes"] == ["auto"]
        assert me["usage"]["usd_day"]["spent"] > 0 and me["usage"]["usd_day"]["limit"] is None
    # no key, digest or clear, reaches the records
    text = "".join(p.read_text() for p in gw.records_dir.glob("*.jsonl*"))
    for secret in (keys.a, keys.admin, "sk-plain", digest(keys.a)):
        assert secret not in text
    assert gw.metric("effgate_requests_total", outcome="client_error") >= 5
    # its chat, its model list and its /v1/tenants/me; the refused ones are client errors
    assert gw.metric("effgate_tenant_requests_total", tenant="team-a", outcome="ok") == 3


def test_tenants_file_hot_reloads_and_a_broken_one_is_refused(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle
) -> None:
    keys = Keys()
    gw, path = start(make_gateway, tmp_path, tenants_yaml(keys), policy_poll_s=0.1)
    fresh = new_key()
    data = tenants_yaml(keys)
    data["tenants"][1]["keys_sha256"].append(digest(fresh))
    path.write_text(yaml.safe_dump(data))
    wait_until(lambda: gw.metric("effgate_tenants_reloads_total", result="ok") >= 1, 10)
    gw.sdk(api_key=fresh).chat.completions.create(model="auto", messages=USER)
    path.write_text("version: 1\ntenants:\n  - name: [broken\n")
    wait_until(lambda: gw.metric("effgate_tenants_reloads_total", result="error") >= 1, 10)
    gw.sdk(api_key=fresh).chat.completions.create(model="auto", messages=USER)  # kept
    # and the admin reload endpoint says what it did
    with gw.http() as http:
        r = http.post("/v1/admin/reload", headers={"authorization": f"Bearer {keys.admin}"})
    assert r.status_code == 200 and r.json()["reloaded"]["tenants"] is False


# ------------------------------------------------------------------ budgets and limits


def test_a_budget_is_enforced_before_the_call(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle
) -> None:
    keys = Keys()
    gw, _ = start(make_gateway, tmp_path, tenants_yaml(keys, budget={"usd_per_day": 1e-9}))
    with pytest.raises(openai.RateLimitError) as info:
        gw.sdk(api_key=keys.b).chat.completions.create(model="auto", messages=USER)
    err = assert_error(info.value.response, 429, "budget_exceeded")
    assert "daily budget" in err["message"]
    retry = int(info.value.response.headers["retry-after"])
    assert 1 <= retry <= 86400
    assert small.stats["requests_total"] == 0, "refused before any upstream call"
    assert gw.metric("effgate_limit_rejections_total", tenant="team-b", limit="usd_day") == 1


def test_concurrent_requests_never_overshoot_the_budget(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle
) -> None:
    keys = Keys()
    # small: 0.15 in / 0.60 out per Mtok; max_tokens 8 over a short prompt costs ~6e-6 at
    # worst: a budget of 4e-5 holds about six worst cases, whatever runs concurrently
    budget = 4e-5
    gw, _ = start(
        make_gateway, tmp_path, tenants_yaml(keys, budget={"usd_per_day": budget}, routes=["small"])
    )

    async def one(client: openai.AsyncOpenAI) -> str:
        try:
            await client.chat.completions.create(model="small", messages=USER, max_tokens=8)
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.response.json()["error"]["code"] == "budget_exceeded"
            return "refused"

    async def burst() -> list[str]:
        async with gw.async_sdk(api_key=keys.b) as client:
            out: list[str] = []
            for _ in range(3):
                out += await asyncio.gather(*(one(client) for _ in range(12)))
            return out

    results = asyncio.run(burst())
    assert results.count("ok") >= 3 and "refused" in results
    with gw.http() as http:
        me = http.get("/v1/tenants/me", headers={"authorization": f"Bearer {keys.b}"}).json()
    day = me["usage"]["usd_day"]
    assert day["held"] == 0 and 0 < day["spent"] <= budget
    assert day["remaining"] == pytest.approx(budget - day["spent"])
    assert gw.metric("effgate_tenant_cost_usd_total", tenant="team-b") == pytest.approx(
        day["spent"], rel=1e-6, abs=1e-9
    )


def test_budget_pressure_routes_cheaper_and_says_so(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    keys = Keys()
    # the stub estimator's difficulty puts small below the route's bar of 0.8 and above 0.3
    data = tenants_yaml(
        keys,
        budget={"usd_per_day": 0.001},
        on_budget_pressure={"at": 0.5, "quality_bar": 0.3},
    )
    gw, _ = start(make_gateway, tmp_path, data)
    with gw.http() as http:
        auth = {"authorization": f"Bearer {keys.b}"}
        first = http.post(
            "/v1/chat/completions",
            json={"model": "routed", "messages": USER, "max_tokens": 8},
            headers=auth,
        )
        assert first.status_code == 200 and first.headers["x-effgate-model"] == "big"
        assert "x-effgate-budget-pressure" not in first.headers
        # each big answer costs ~9e-5: after about six, spend passes half the budget and
        # the next request is routed under the tenant's pressure bar
        for _ in range(20):
            r = http.post(
                "/v1/chat/completions",
                json={"model": "routed", "messages": USER, "max_tokens": 8},
                headers=auth,
            )
            assert r.status_code == 200
            if "x-effgate-budget-pressure" in r.headers:
                break
            assert r.headers["x-effgate-model"] == "big"
        spent = http.get("/v1/tenants/me", headers=auth).json()["usage"]["usd_day"]["spent"]
    assert r.headers["x-effgate-model"] == "small"
    assert float(r.headers["x-effgate-budget-pressure"]) >= 0.5 and spent >= 0.0004
    assert r.headers["x-effgate-quality-bar"] == "0.3"
    assert gw.metric("effgate_budget_pressure_total", tenant="team-b") >= 1


def test_rpm_tpm_and_max_tokens(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle
) -> None:
    keys = Keys()
    data = tenants_yaml(keys, limits={"rpm": 3, "max_tokens": 4, "max_messages": 2})
    data["tenants"][0]["limits"] = {"tpm": 50}
    gw, _ = start(make_gateway, tmp_path, data)
    b = gw.sdk(api_key=keys.b)
    clear_of_minute_boundary()
    # no max_tokens: the tenant's is sent upstream, so the worst case holds
    reply = b.chat.completions.create(model="auto", messages=USER)
    assert reply.usage is not None and reply.usage.completion_tokens <= 4
    with pytest.raises(openai.BadRequestError) as too_many:
        b.chat.completions.create(model="auto", messages=USER, max_tokens=5)
    err = assert_error(too_many.value.response, 400, "integer_above_max_value")
    assert err["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as long_chat:
        b.chat.completions.create(model="auto", messages=USER * 3)
    assert assert_error(long_chat.value.response, 400, "array_above_max_length")["param"] == (
        "messages"
    )
    b.models.list()  # models count against the rpm too (a refused request does not)
    b.chat.completions.create(model="auto", messages=USER)
    with pytest.raises(openai.RateLimitError) as rpm:
        b.chat.completions.create(model="auto", messages=USER)
    assert (
        "requests per minute"
        in assert_error(rpm.value.response, 429, "rate_limit_exceeded")["message"]
    )
    # team-a: 50 tokens a minute; a request with max_tokens 20 reserves 20 + its prompt
    a = gw.sdk(api_key=keys.a)
    a.chat.completions.create(model="auto", messages=USER, max_tokens=20)
    with pytest.raises(openai.RateLimitError) as tpm:
        a.chat.completions.create(model="auto", messages=USER, max_tokens=20)
    assert "tokens per minute" in tpm.value.response.json()["error"]["message"]
    assert gw.metric("effgate_limit_rejections_total", tenant="team-a", limit="tpm") == 1


def test_quality_bar_bounds(
    make_gateway: GatewayFactory, tmp_path: Path, small: FakeUpstreamHandle, big: FakeUpstreamHandle
) -> None:
    keys = Keys()
    gw, _ = start(make_gateway, tmp_path, tenants_yaml(keys, quality_bar={"min": 0.2, "max": 0.5}))
    with gw.http() as http:
        auth = {"authorization": f"Bearer {keys.b}"}
        body = {"model": "routed", "messages": USER, "max_tokens": 4}
        r = http.post("/v1/chat/completions", json=body, headers=auth)
        # the route's 0.8 is held to the tenant's ceiling of 0.5: small clears it
        assert r.status_code == 200 and r.headers["x-effgate-model"] == "small"
        r = http.post(
            "/v1/chat/completions", json=body, headers={**auth, "x-effgate-quality-bar": "0.9"}
        )
        err = assert_error(r, 403, "permission_denied")
        assert err["param"] == "x-effgate-quality-bar"


# ------------------------------------------------------------------ the ledger itself


def test_ledger_windows_roll_over() -> None:
    now = [1_767_225_599.5]  # 2025-12-31T23:59:59.5Z: the day, the month and the minute end
    t = Tenant("t", usd_per_day=1.0, usd_per_month=1.5, tracked=True)
    ledger = Ledger(clock=lambda: now[0])
    ms = meters(t, now[0])
    assert [m.kind for m in ms] == ["usd_day", "usd_month"]
    assert all(0 < m.reset_s <= 1 for m in ms)

    async def run() -> None:
        hold = await ledger.reserve(t, 0.9, 0)
        assert hold is not None
        with pytest.raises(BudgetExceeded):
            await ledger.reserve(t, 0.2, 0)
        ledger.settle(hold, 0.4, 0)
        ledger.settle(hold, 0.4, 0)  # twice is once
        assert (await ledger.usage(t))["usd_day"]["spent"] == pytest.approx(0.4)
        now[0] += 1.0  # a new day, month and year
        usage = await ledger.usage(t)
        assert usage["usd_day"]["spent"] == 0 and usage["usd_month"]["spent"] == 0
        await ledger.reserve(t, 1.0, 0)  # the whole new day's budget

    asyncio.run(run())


def test_the_policys_daily_budget_is_enforced_for_everyone(
    make_gateway: GatewayFactory, policy: Any, small: FakeUpstreamHandle
) -> None:
    # the report that opened this: `budget: {daily_usd: 1e-9}` served 5 requests of 5
    gw = make_gateway(policy(budget={"daily_usd": 1e-9}))
    client = gw.sdk()
    refused = 0
    for _ in range(5):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="small", messages=USER, max_tokens=4)
        assert (
            "budget.daily_usd"
            in assert_error(info.value.response, 429, "budget_exceeded")["message"]
        )
        refused += 1
    assert refused == 5 and small.stats["requests_total"] == 0
    # a budget that covers two worst cases serves two, whoever asks
    gw2 = make_gateway(policy(budget={"daily_usd": 1.2e-5}))
    body = {"model": "small", "messages": USER, "max_tokens": 8}
    with gw2.http() as http:
        codes = [http.post("/v1/chat/completions", json=body).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[-1] == 429
