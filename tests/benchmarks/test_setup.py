"""Scenario bodies, the generated policy and LiteLLM config, pinning, and server processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml

from benchmarks import peer_litellm
from benchmarks.procs import cpu_set, parse_cores, pinning_available, session_cpu_s, spawn
from benchmarks.scenarios import Scenario, litellm_config, policy_yaml, scenarios
from benchmarks.standin import synthetic_rows, write_standin
from policies.loader import build_policy
from router_models import load_estimator


def test_scenarios_ask_each_target_for_its_own_name() -> None:
    routed_stream = Scenario("stream", "routed")
    assert routed_stream.model("gateway") == "auto-paced"
    assert routed_stream.model("direct") == "mock-small"
    assert routed_stream.model("litellm") is None
    body = orjson.loads(Scenario("stream", "passthrough").body("litellm"))
    assert body["model"] == "mock-small-paced"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "stream" not in orjson.loads(Scenario("json", "passthrough").body("gateway"))
    names = [s.name for s in scenarios(stream=True, routed=True)]
    assert names == ["json/passthrough", "json/routed", "stream/passthrough", "stream/routed"]
    assert [s.name for s in scenarios(stream=False, routed=False)] == ["json/passthrough"]


def test_generated_policy_compiles_with_the_real_loader() -> None:
    data = policy_yaml(9001, 9002).encode()
    policy = build_policy(data, path="bench.yaml", skills={}, discrimination=1.5)
    assert set(policy.models) == {"small", "large", "small-paced", "large-paced"}
    assert policy.models["small-paced"].base_url == "http://127.0.0.1:9002/v1"
    assert policy.models["small"].upstream_model == "mock-small"
    assert set(policy.routes) == {"auto", "auto-paced"}
    for scenario in scenarios(stream=True, routed=True):
        model = scenario.model("gateway")
        assert model in policy.models or model in policy.routes


def test_litellm_config_points_both_names_at_the_fakes() -> None:
    doc = yaml.safe_load(litellm_config(9001, 9002))
    by_name = {m["model_name"]: m["litellm_params"] for m in doc["model_list"]}
    assert by_name["mock-small"]["api_base"] == "http://127.0.0.1:9001/v1"
    assert by_name["mock-small-paced"]["api_base"] == "http://127.0.0.1:9002/v1"
    assert {p["model"] for p in by_name.values()} == {"openai/mock-small"}
    cmd = peer_litellm.command(Path("/v/bin/litellm"), Path("c.yaml"), 4000)
    assert cmd[:3] == ["/v/bin/litellm", "--config", "c.yaml"]
    assert peer_litellm.ENV["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_standin_artifact_is_trained_and_loads(tmp_path: Path) -> None:
    rows = synthetic_rows(40)
    assert len({r["id"] for r in rows}) == 40
    est = load_estimator(write_standin(tmp_path / "a"))
    d = est.difficulty([{"role": "user", "content": "prove that sqrt(2) is irrational"}])
    assert isinstance(d, float)
    assert est.skills["mock-small"] < est.skills["mock-large"]


@pytest.mark.parametrize(
    ("spec", "server", "client"), [("1:0", "1", "0"), ("2-3:0,1", "2-3", "0,1")]
)
def test_parse_cores(spec: str, server: str, client: str) -> None:
    pin = parse_cores(spec)
    assert pin is not None
    assert (pin.server, pin.client) == (server, client)


@pytest.mark.parametrize("spec", ["1", "a:b", "1:", ":0", "1:0:2"])
def test_parse_cores_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="--cores"):
        parse_cores(spec)


def test_parse_cores_off_and_cpu_sets() -> None:
    assert parse_cores("off") is None
    assert cpu_set("0-2,5") == {0, 1, 2, 5}
    pin = parse_cores("0:0")
    assert pin is not None
    why = pinning_available(pin)
    assert why is None or "taskset" in why
    far = parse_cores("4095:0")
    assert far is not None
    assert pinning_available(far) is not None


def test_spawned_process_is_measured_and_stopped(tmp_path: Path) -> None:
    burn = (
        "import time\nt=time.process_time()\nwhile time.process_time()-t<0.2: pass\n"
        "print('listening on http://127.0.0.1:4321/v1', flush=True)\ntime.sleep(60)"
    )
    proc = spawn("burner", [sys.executable, "-c", burn], cpus=None, log_dir=tmp_path)
    try:
        assert proc.wait_port(20) == 4321
        assert proc.status_kb("VmRSS") > 0
        assert session_cpu_s(proc.pid) >= 0.15
        assert "listening" in proc.tail()
        proc.check_alive()
    finally:
        proc.stop(timeout_s=5)
    assert proc.popen.returncode is not None
    with pytest.raises(RuntimeError, match="burner exited"):
        proc.check_alive()
    assert proc.status_kb("VmRSS") == 0
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{proc.pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
