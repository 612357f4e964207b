"""The signature's prefix cache in a running gateway: a workflow's long system prompt is
hashed once for learned heads, requests score and record exactly as without the cache, and
the cache is one of the bounded stores on /metrics (EFFGATE_SIGNATURE_CACHE_MAX_BYTES)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from router_models import load_estimator
from router_models.signature import (
    PREFIX_CACHE_BYTES,
    PREFIX_MIN_BYTES,
    PREFIXES,
    Signature,
    _segments,
    hashed_ngrams,
)
from router_models.train import main as train_main
from tests.gateway.conftest import GatewayFactory, PolicyFactory, chat
from tests.gateway.test_estimator_reload import _artifact
from tests.gateway.test_task_tags import _records

PREAMBLE = "You are the support desk's triage assistant. Follow the house rules. " * 12


@pytest.fixture(autouse=True)
def _default_size() -> Iterator[None]:
    """The cache is process-wide: give later tests its default size back."""
    yield
    PREFIXES.resize(PREFIX_CACHE_BYTES)


def _explain(gw: object, n: int) -> list[dict[str, object]]:
    out = []
    with gw.http() as c:  # type: ignore[attr-defined]
        for i in range(n):
            body = chat(f"alpha beta gamma {i} delta omega", model="routed")
            body["messages"].insert(0, {"role": "system", "content": PREAMBLE})
            r = c.post("/v1/route/explain", json=body)
            assert r.status_code == 200, r.text
            served = c.post("/v1/chat/completions", json=body)
            assert served.status_code == 200, served.text
            out.append({"explain": r.json(), "messages": body["messages"]})
    return out


def test_a_repeated_preamble_is_hashed_once_and_changes_nothing(
    make_gateway: GatewayFactory,
    policy: PolicyFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert len(PREAMBLE) >= PREFIX_MIN_BYTES
    base = _artifact(tmp_path / "base", small=0.0, big=2.0)
    out = tmp_path / "adapted"
    recs = _records(tmp_path / "records.jsonl", 200)
    assert train_main(["--records", str(recs), "--base", str(base), "--out", str(out)]) == 0
    capsys.readouterr()
    est = load_estimator(out)
    routes = [{"name": "routed", "candidates": ["small", "big"], "quality_bar": 0.7}]
    pol = policy(routes=routes, default_route="routed")

    PREFIXES.clear()
    hits = PREFIXES.hits
    cached = make_gateway(pol, estimator=est, signature_cache_max_bytes=1 << 20)
    with_cache = _explain(cached, 6)
    assert PREFIXES.hits - hits >= 5  # the first request hashed the preamble, the rest looked it up
    assert cached.metric("effgate_store_entries", store="signature_prefixes") == 1
    held = cached.metric("effgate_store_bytes", store="signature_prefixes")
    assert 0 < held <= cached.metric("effgate_store_max_bytes", store="signature_prefixes")
    assert cached.metric("effgate_store_max_bytes", store="signature_prefixes") == 1 << 20
    # every record keeps the signature of the request hashed whole, preamble and all
    records = [r for r in cached.records(at_least=12) if r.get("endpoint") == "chat"]
    assert len(records) == 6
    for rec, sent in zip(records, with_cache, strict=True):
        kept = Signature.from_json(rec["signature"])
        ids, counts = hashed_ngrams(_segments(sent["messages"], None), None)  # type: ignore[arg-type]
        assert np.array_equal(kept.ids, ids) and np.array_equal(kept.counts, counts)

    # the same requests with the cache off: the same P and the same choice
    off = make_gateway(pol, estimator=est, signature_cache_max_bytes=0)
    assert len(PREFIXES) == 0  # resized to nothing: emptied
    without = _explain(off, 6)
    for a, b in zip(with_cache, without, strict=True):
        assert a["explain"]["candidates"] == b["explain"]["candidates"]  # type: ignore[index]
        assert a["explain"]["model"] == b["explain"]["model"]  # type: ignore[index]
    assert off.metric("effgate_store_entries", store="signature_prefixes") == 0
