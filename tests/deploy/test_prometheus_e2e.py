"""End to end: a real gateway, scraped by a real Prometheus, answers every dashboard and rule query.

The gateway (`create_app` under uvicorn on loopback) sits in front of two fake upstreams
(`small`, `big`). Traffic covers JSON, streaming, a retry followed by a fallback, upstream 5xx,
a client 4xx, feedback, a policy reload that succeeds and one that fails, and Redis down (its
URL is a closed port: the gateway falls back to its in-process store, and the request records
bound for the Redis stream are dropped). A real `prometheus` scrapes the gateway
every second and evaluates deploy/prometheus/*.yml; then every query of every dashboard panel,
template variable and rule goes through Prometheus' HTTP API:

- panels, variables and recording rules must return data;
- alert expressions must evaluate without error, and the ones this traffic trips must match;
- GPU queries must return an empty result without error on a host without an NVIDIA driver
  (the GPU collector exports nothing there), and evaluate without error on a host with one.

prometheus is installed by CI (.ci/run); a missing binary fails the test rather than skipping.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pynvml
import pytest
import uvicorn
import yaml

from gateway.app import create_app
from gateway.settings import Settings
from gateway.tenants import digest
from tests.deploy.queries import (
    RULE_FILES,
    Query,
    all_queries,
    label_values_call,
    substitute,
)
from tests.fakes.servers import FakeUpstreamHandle, serve_fake_upstream

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

# What the dashboards' variables become when a query is checked: "All" for every variable.
VARIABLES = {"$route": ".*", "$model": ".*", "$gpu": ".*", "$datasource": "prometheus"}
# Alert expressions this traffic trips (5xx share, spend rate against a tiny daily budget, a
# rejected policy reload, Redis down); the others must just evaluate.
ALERTS_EXPECTED_TO_MATCH = {
    "EffgateHighErrorRate",
    "EffgateBudgetBurn",
    "EffgatePolicyReloadFailed",
    "EffgateRecordsDropped",
    "EffgateSharedStoreDown",  # needs 5m of fallbacks to fire; the expression matches at once
    "EffgateLimitsDegraded",  # the same Redis: budgets and limits are enforced per replica
}
TEAM_KEY, PACED_KEY = "eg-e2e-team-key", "eg-e2e-paced-key"
SCRAPE_S = 1.0


def _nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_GPU = _nvml_present()


class PromptLengthEstimator:
    """Difficulty from prompt length, through create_app's estimator seam: deterministic routing.

    With the skills in the policy below, prompts up to 200 characters clear `small`'s bar and
    longer ones go to `big`.
    """

    skills: dict[str, float] = {}
    discrimination = 1.5

    def difficulty(self, messages: list[Any]) -> float:
        return sum(len(str(m.get("content", ""))) for m in messages) / 200


def policy_yaml(small: FakeUpstreamHandle, big: FakeUpstreamHandle, comment: str = "") -> str:
    # budget: the spend of one burst (~0.001 USD) extrapolated to a day is above 0.01 USD,
    # while total spend stays below it (the gateway enforces it: each request reserves its
    # worst case first, which max_output_tokens keeps to ~0.001 USD on big).
    return f"""# {comment}
version: 1
budget: {{daily_usd: 0.01}}
models:
  - {{id: small, provider: openai, base_url: "{small.base_url}", upstream_model: mock-small,
     input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60, context_window: 128000, skill: 1.0,
     max_output_tokens: 64, local_gpus: [0], max_retries: 1}}
  - {{id: big, provider: openai, base_url: "{big.base_url}", upstream_model: mock-big,
     input_usd_per_mtok: 3.0, output_usd_per_mtok: 15.0, context_window: 128000, skill: 3.0,
     max_output_tokens: 64, max_retries: 0}}
routes:
  - {{name: auto, candidates: [small, big], quality_bar: 0.5, reference_model: big,
     shadow: {{sample: 0.5, judge: big, daily_usd: 1.0}}}}
  - {{name: premium, candidates: [big]}}
default_route: auto
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_gateway(settings: Settings) -> Iterator[str]:
    app = create_app(settings, estimator=PromptLengthEstimator())
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the gateway failed to start"
        assert time.monotonic() < deadline, "the gateway did not start in 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Prometheus:
    url: str
    log: Path

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.text)
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        data = self.get("/api/v1/query", query=expr)
        result: list[Any] = data["result"]
        return result

    def scrapes(self) -> int:
        result = self.query('count_over_time(up{job="effgate"}[1h])')
        return int(float(result[0]["value"][1])) if result else 0

    def wait_for_scrapes(self, n: int, timeout_s: float = 30) -> None:
        target = self.scrapes() + n
        deadline = time.monotonic() + timeout_s
        while self.scrapes() < target:
            assert time.monotonic() < deadline, f"fewer than {n} scrapes; log: {self.log}"
            time.sleep(0.25)


@contextlib.contextmanager
def run_prometheus(tmp: Path, gateway_port: int) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found on PATH: install it (Debian: apt-get install prometheus)")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S:g}s", "evaluation_interval": f"{SCRAPE_S:g}s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "effgate", "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(prom.url + "/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat(client: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def send_burst(client: httpx.Client, small: FakeUpstreamHandle, *, paced: bool = False) -> None:
    """One round of every kind of traffic the dashboards and rules look at."""
    accepted: list[str] = []
    for i in range(3):  # JSON, short prompt: small
        r = chat(client, f"hello {i}")
        assert r.status_code == 200 and r.headers["x-effgate-model"] == "small", r.text
        accepted.append(r.headers["x-effgate-request-id"])
    for _ in range(2):  # long prompt: big
        r = chat(client, "explain the proof step by step, carefully. " * 8)
        assert r.status_code == 200 and r.headers["x-effgate-model"] == "big", r.text
        accepted.append(r.headers["x-effgate-request-id"])
    r = chat(client, "premium", model="premium")
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big", r.text
    rejected = r.headers["x-effgate-request-id"]
    for _ in range(2):  # SSE with a usage chunk: time to first token
        r = chat(client, "stream please", stream=True, stream_options={"include_usage": True})
        assert r.status_code == 200 and "data: [DONE]" in r.text, r.text
        accepted.append(r.headers["x-effgate-request-id"])
    # small fails twice (first try and its one retry), then the fallback to big serves
    small.set_faults({"kind": "status", "status": 503, "count": 2})
    r = chat(client, "fall back")
    assert r.status_code == 200 and r.headers["x-effgate-model"] == "big", r.text
    # every upstream fails: 5xx to the client
    r = chat(client, "break [[fault:status=500]]")
    assert r.status_code >= 500, r.text
    # unknown model: 4xx
    r = client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert 400 <= r.status_code < 500, r.text
    for rid in accepted:
        r = client.post("/v1/feedback", json={"request_id": rid, "accepted": True, "score": 0.9})
        assert r.status_code == 200, r.text
    r = client.post("/v1/feedback", json={"request_id": rejected, "accepted": False, "score": 0.1})
    assert r.status_code == 200, r.text
    if not paced:
        return
    # a tenant near its budget is routed cheaper, then runs out of requests per minute (once:
    # the second burst may fall in the same minute)
    paced_key = {"authorization": f"Bearer {PACED_KEY}"}
    codes, pressure = [], []
    for _ in range(3):
        r = client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "paced"}]},
            headers=paced_key,
        )
        codes.append(r.status_code)
        pressure.append("x-effgate-budget-pressure" in r.headers)
    assert codes == [200, 200, 429] and pressure[1], (codes, pressure)


def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def live_sha(client: httpx.Client) -> str:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("effgate_policy_info{"):
            return line.split('sha256="', 1)[1].split('"', 1)[0]
    raise AssertionError("no effgate_policy_info on /metrics")


def reload_errors(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('effgate_policy_reloads_total{result="error"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("e2e")
    with (
        serve_fake_upstream(models=("mock-small",)) as small,
        serve_fake_upstream(models=("mock-big",)) as big,
    ):
        policy = tmp / "policy.yaml"
        policy.write_text(policy_yaml(small, big, "first"))
        tenants = tmp / "tenants.yaml"
        team = {"name": "team", "keys_sha256": [digest(TEAM_KEY)]}
        paced = {
            "name": "paced",
            "keys_sha256": [digest(PACED_KEY)],
            "budget": {"usd_per_day": 0.01},
            "limits": {"rpm": 2},
            "on_budget_pressure": {"at": 0.01, "quality_bar": 0.1},
        }
        tenants.write_text(yaml.safe_dump({"version": 1, "tenants": [team, paced]}))
        settings = Settings(
            port=free_port(),
            policy_path=policy,
            policy_poll_s=0.1,
            records_dir=tmp / "records",
            # nothing listens there, and no stream record may be held for a replay:
            # effgate_records_dropped_total{sink="redis"} counts
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            records_redis_stream="effgate:records",
            records_stream_max_bytes=1,
            circuit_failures=1000,  # keep routing predictable: no circuit opens
            tenants_path=tenants,
        )
        with (
            serve_gateway(settings) as gateway,
            httpx.Client(
                base_url=gateway, timeout=30, headers={"authorization": f"Bearer {TEAM_KEY}"}
            ) as client,
        ):
            send_burst(client, small, paced=True)
            with run_prometheus(tmp, settings.port) as prom:
                prom.wait_for_scrapes(3)
                # burst two, seen by Prometheus as increases of existing series
                send_burst(client, small)
                sha = live_sha(client)
                policy.write_text(policy_yaml(small, big, "second"))
                wait_until(lambda: live_sha(client) != sha, "no reload after a good edit")
                sha, errors = live_sha(client), reload_errors(client)
                good = policy.read_text()
                policy.write_text("version: 2\n")  # rejected: the running policy stays
                wait_until(lambda: reload_errors(client) > errors, "bad edit not rejected")
                assert live_sha(client) == sha
                policy.write_text(good)
                prom.wait_for_scrapes(4)
                yield prom


QUERIES = all_queries()


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.source)
def test_query_against_live_prometheus(prometheus: Prometheus, query: Query) -> None:
    expr = substitute(query.expr, VARIABLES)
    if query.kind == "variable":
        call = label_values_call(expr)
        assert call is not None, query.source
        selector, label = call
        result: list[Any] = prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
    else:
        result = prometheus.query(expr)  # raises on a PromQL error
    if query.gpu:
        if not HAS_GPU:
            # no NVIDIA driver here: the GPU collector exports nothing, so nothing to show
            assert result == [], f"{query.source}: GPU data on a host without a GPU?"
        return
    if query.kind == "alert":
        name = query.source.split(": ", 1)[1]
        if name in ALERTS_EXPECTED_TO_MATCH:
            assert result, f"{query.source}: this traffic should match\n{expr}"
        return
    assert result, f"{query.source}: no data\n{expr}"


def test_every_rule_evaluates_cleanly(prometheus: Prometheus) -> None:
    groups = prometheus.get("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = sum(1 for q in QUERIES if q.kind in ("alert", "record"))
    assert len(rules) == expected
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_the_gateway_target_is_up(prometheus: Prometheus) -> None:
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets


def test_traffic_shows_up_as_rates(prometheus: Prometheus) -> None:
    # the second burst happened while Prometheus watched: rates are positive, not just present
    def value(expr: str) -> float:
        result = prometheus.query(expr)
        assert result, expr
        return float(result[0]["value"][1])

    # burst two: 11 requests, 7 of them accepted through feedback. The window is 10 minutes,
    # not 1: on a loaded machine the query tests before this one can outlast a minute, and
    # Prometheus first scraped after burst one, so the increase still counts burst two only
    assert value("sum(increase(effgate_requests_total[10m]))") > 10.5
    assert value('sum(increase(effgate_outcomes_total{outcome="accepted"}[10m]))') > 6.5
    assert value("sum(increase(effgate_fallbacks_total[10m]))") >= 1
    assert value("sum(increase(effgate_cost_usd_total[10m]))") > 0
    assert value('sum(increase(effgate_records_dropped_total{sink="redis"}[10m]))') > 0
