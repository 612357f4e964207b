"""The estimator artifact named by EFFGATE_ESTIMATOR_PATH is watched and swapped live.

A new artifact goes live with the policy recompiled on its skills; one that does not load
(a corrupt weights file) or with which the policy does not compile never replaces the
running one, and both outcomes are counted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from router_models import load_estimator
from router_models.artifact import default_artifact_dir
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat, wait_until


def _artifact(root: Path, **skills: float) -> Path:
    shutil.copytree(default_artifact_dir(), root, dirs_exist_ok=True)
    meta_path = root / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["skills"] = {**meta["skills"], **skills}
    meta_path.write_text(json.dumps(meta))
    return root


def _explain(gw: Any) -> dict[str, Any]:
    with gw.http() as c:
        r = c.post("/v1/route/explain", json=chat(model="routed"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _swap(src: Path, dst: Path) -> None:
    """Replace ``dst``'s files with ``src``'s, weights first (as `effgate train` writes)."""
    for name in ("weights.npz", "metadata.json"):
        shutil.copy(src / name, dst / name)


def test_a_new_artifact_goes_live_and_a_bad_one_never_does(
    make_gateway: GatewayFactory, policy: PolicyFactory, tmp_path: Path
) -> None:
    live = _artifact(tmp_path / "live", small=-3.0, big=4.0)
    gw = make_gateway(
        policy(), estimator=load_estimator(live), estimator_path=live, policy_poll_s=0.05
    )
    first = _explain(gw)
    assert first["model"] == "big" and first["p_source"] == {"small": "prior", "big": "prior"}

    def reloads(result: str) -> float:
        return gw.metric("effgate_estimator_reloads_total", result=result)

    # a better small model: the policy is recompiled with the new skills, no restart
    _swap(_artifact(tmp_path / "v2", small=4.0, big=4.5), live)
    wait_until(lambda: reloads("ok") == 1, 5, "the new artifact live")
    second = _explain(gw)
    assert second["model"] == "small" and second["reason"] == "cheapest_above_bar"
    info = [k for k in gw.scrape() if k[0] == "effgate_estimator_info"]
    assert len(info) == 1  # one series: the live artifact

    # corrupt weights: refused, counted, the running estimator keeps serving
    (live / "weights.npz").write_bytes(b"not a zip")
    wait_until(lambda: reloads("error") == 1, 5, "the corrupt artifact refused")
    assert _explain(gw)["candidates"] == second["candidates"]

    # a valid artifact the policy cannot use (a bar route's model loses its skill)
    v3 = _artifact(tmp_path / "v3")
    meta = json.loads((v3 / "metadata.json").read_text())
    meta["skills"].pop("small", None)
    (v3 / "metadata.json").write_text(json.dumps(meta))
    _swap(v3, live)
    wait_until(lambda: reloads("error") == 2, 5, "the artifact the policy rejects")
    assert _explain(gw)["candidates"] == second["candidates"]
    with gw.http() as c:
        assert c.post("/v1/chat/completions", json=chat(model="routed")).status_code == 200
    assert reloads("ok") == 1


def test_a_prior_routed_record_reuses_the_scorers_dense_features(
    make_gateway: GatewayFactory, policy: PolicyFactory, tmp_path: Path
) -> None:
    """The shipped estimator without heads hands the record the dense features it computed
    the difficulty from; the record's signature is the one computed from scratch."""
    from router_models.signature import signature

    live = _artifact(tmp_path / "live", small=-3.0, big=4.0)
    gw = make_gateway(policy(), estimator=load_estimator(live))
    body = chat("Prove that 2 + 2 = 4.\n- step one\n- step two", model="routed")
    body["messages"].insert(0, {"role": "system", "content": "You are a careful tutor."})
    with gw.http() as c:
        r = c.post("/v1/chat/completions", json=body, headers={"x-request-id": "dense-1"})
    assert r.status_code == 200, r.text
    (rec,) = [x for x in gw.records(at_least=1) if x["id"] == "dense-1"]
    assert rec["decision"]["difficulty"] is not None  # scored by the prior
    assert rec["signature"] == signature(body["messages"]).to_json()
