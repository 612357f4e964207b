"""effgate's gateway: everything that serves a request, and the offline tools beside it.

A chat request, in the order its modules run (docs/architecture.md draws it):

    transport    the HTTP connection (uvicorn's httptools protocol): header and body read
                 deadlines (408), the connection cap (503)
    edge         the ASGI app: request id, headers, in-flight gauge, the catch-all 500;
                 dispatches each /v1 path (routes.SPECS) to lifecycle.serve
    lifecycle    the one owner: authenticate, read the body, run the endpoint, map errors
                 to outcomes, render them (errors), and call finish exactly once
    pipeline     the endpoint functions: chat, embeddings, explain, feedback, models
                 (validate with protocol, check_limits, route_input, policies.decide)
    forward      retries and fallbacks along the decision's chain, through upstreams/
    relay, sse   the SSE stream to the client, event by event (streams finish here)
    accountant   a finished exchange -> metrics, a request record, the feedback summary

Beside the request path: app (create_app and the lifespan that builds AppState in state),
settings, exchange (one request's running account), accounting (usage and prices), health
(circuit breakers, output averages), kv (shared store: memory or Redis), records (the
request log), metrics and gpu (Prometheus), tokens, explain (JSON views of the policy).

Sub-packages: upstreams/ (the Upstream seam and its aiohttp, httpx and litellm clients),
report/ (``effgate report``, offline), cli/ (the ``effgate`` command, ``serve``, ``demo``).
The fake model servers for tests and the demo live outside, in the ``fake_upstream`` package.
"""
