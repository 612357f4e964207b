"""The route table: each /v1 path and the endpoint that serves it, through ``lifecycle.serve``.

``gateway.edge`` dispatches by exact path (``MODEL_PREFIX`` stands for ``/v1/models/<id>``);
health, readiness and metrics are answered in the edge itself.
"""

from __future__ import annotations

from gateway import pipeline
from gateway.lifecycle import Spec

MODEL_PREFIX = "/v1/models/"

SPECS: dict[str, Spec] = {
    "/v1/chat/completions": Spec("chat", pipeline.chat, calls_out=True),
    "/v1/embeddings": Spec("embeddings", pipeline.embeddings, calls_out=True),
    "/v1/route/explain": Spec("explain", pipeline.explain),
    # feedback never spends the rate limit: rating an answer is not another request for one
    "/v1/feedback": Spec("feedback", pipeline.feedback, body_limit=64 * 1024, rate_limited=False),
    "/v1/tenants/me": Spec("tenants", pipeline.tenant_me, method="GET", reads_body=False),
    "/v1/admin/tenants": Spec(
        "admin", pipeline.admin_tenants, method="GET", reads_body=False, admin=True
    ),
    "/v1/admin/reload": Spec(
        "admin", pipeline.admin_reload, reads_body=False, admin=True, rate_limited=False
    ),
    "/v1/models": Spec("models", pipeline.list_models, method="GET", reads_body=False),
    MODEL_PREFIX: Spec("models", pipeline.get_model, method="GET", reads_body=False),
}
