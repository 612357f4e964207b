"""Process settings: how the gateway process runs (read once from ``EFFGATE_*``; restart to change).

How requests are routed lives in the policy YAML instead, which is hot-reloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

import policies

DEFAULT_POLICY = Path(policies.__file__).resolve().parent / "default.yaml"


class Settings(BaseSettings):
    """Every field maps to ``EFFGATE_<NAME>`` (nested with ``__``)."""

    model_config = SettingsConfigDict(env_prefix="EFFGATE_", env_nested_delimiter="__", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    policy_path: Path = DEFAULT_POLICY
    policy_poll_s: float = Field(2.0, gt=0)
    # path to an estimator artifact directory; None = the shipped default
    estimator_path: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False

    # limits
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # client API keys accepted by the gateway, mapped to tenant names; empty = no auth
    api_keys: dict[str, str] = Field(default_factory=dict)
    rate_limit_rpm: int | None = Field(None, gt=0)  # per tenant; None = unlimited
    # tenants, their key digests, budgets and limits (gateway/tenants.py), hot-reloaded
    tenants_path: Path | None = None
    # when Redis fails: open = each replica enforces budgets and limits from the last shared
    # totals it saw and reconciles when Redis is back; closed = metered requests get 503
    limits_fail_mode: Literal["open", "closed"] = "open"
    # a reservation its replica never settled (it died) is released after this long
    limits_hold_ttl_s: float = Field(900.0, gt=0)
    # tenant label values on per-tenant metrics; tenants past the cap are counted as "other"
    metrics_max_tenants: int = Field(100, gt=0)

    # the client for OpenAI-compatible upstreams: httptools (the leanest, docs/benchmarks.md),
    # aiohttp, or httpx (the only one that honours HTTP(S)_PROXY)
    http_client: Literal["httptools", "aiohttp", "httpx"] = "httptools"
    # upstream connection pool defaults (per model, a policy may override)
    pool_timeout_s: float = 5.0
    retry_backoff_s: float = 0.05
    retry_backoff_max_s: float = 2.0
    circuit_failures: int = 5
    circuit_cooldown_s: float = 30.0

    # shared state and records
    redis_url: SecretStr | None = None
    redis_timeout_s: float = 0.25
    feedback_ttl_s: int = 7 * 24 * 3600
    # in-process store only (no Redis): at most this many request summaries, oldest evicted
    feedback_max_items: int = Field(200_000, gt=0)
    records_dir: Path | None = Path("records")
    records_max_bytes: int = 64 * 1024 * 1024
    records_backups: int = 10
    records_buffer: int = 10_000
    records_redis_stream: str | None = None
    # which chat records carry the request's hashed signature (router_models.signature),
    # what `effgate train --records` learns from without `log_prompts`: "routed" (requests
    # the estimator scored, on a route with a quality bar, and every shadow-evaluated one),
    # "all" (also explicit-model requests: about 0.2 ms more CPU each), "off"; true and
    # false mean all and off
    records_signatures: Literal["routed", "all", "off"] = "routed"

    # -- connections, input deadlines and shutdown (gateway/transport.py, docs/operations.md)
    # a request's line and headers must arrive within this many seconds of the connection
    # opening (of the request's first byte, on a kept-alive connection); else 408 and close
    header_timeout_s: float = Field(10.0, gt=0)
    # the whole body within this many seconds of the headers; else 408 request_timeout
    body_timeout_s: float = Field(30.0, gt=0)
    # connections served at once; a request on one past it gets 503 server_overloaded
    # (None: no cap). Slow clients hold their slot only until the deadlines above
    max_connections: int | None = Field(1024, gt=0)
    # an idle kept-alive connection is closed after this many seconds (uvicorn's keep-alive)
    keep_alive_s: float = Field(5.0, gt=0)
    # on SIGTERM: stop accepting, then let in-flight requests and streams finish for up to
    # this many seconds; what is still running then is cut (and recorded), records flushed
    shutdown_timeout_s: float = Field(30.0, ge=0)
    # on SIGTERM, before the above: keep serving for this many seconds while /readyz answers
    # 503 "draining", so a load balancer that finds stopping replicas by health checks
    # (HAProxy in deploy/docker-compose.yml) stops sending before connections close. 0: stop
    # at once (Kubernetes: a preStop sleep does this instead). A second SIGTERM, or SIGINT,
    # ends the wait
    shutdown_delay_s: float = Field(0.0, ge=0)

    # -- bounded memory (gateway/kv.py, gateway/records.py; docs/operations.md "Memory") ----
    # Every in-process store and buffer is bounded in bytes (estimated: key + value + a fixed
    # per-entry overhead); the defaults keep the whole process under 250 MB RSS.
    # the in-process store: request summaries and verdicts feedback joins, rate windows,
    # shadow totals (with Redis: its local fallback). Oldest entries are evicted first
    # (effgate_store_evictions_total{store="kv"|"kv_local"}); feedback_max_items caps the count
    memory_kv_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # with Redis: summaries and verdicts Redis has not taken yet (down or slow), held and
    # replayed when it answers; past this the oldest are dropped from the replay (they stay
    # in the local store), counted in effgate_store_dropped_total{store="kv_pending"}
    redis_pending_max_bytes: int = Field(32 * 1024 * 1024, gt=0)
    # a failed Redis write is retried after this long, doubling up to redis_retry_max_s
    redis_retry_s: float = Field(0.1, gt=0)
    redis_retry_max_s: float = Field(5.0, gt=0)
    # request records queued for the writer (estimated bytes, beside records_buffer items);
    # past it new records are dropped (effgate_records_dropped_total{sink="buffer"})
    records_buffer_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # records the Redis stream has not taken (Redis down), held and replayed in order; past
    # this the oldest are dropped (effgate_records_dropped_total{sink="redis"})
    records_stream_max_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # the stream is trimmed to about this many records (XADD MAXLEN ~): its Redis memory is
    # about 1.2 times a record's bytes (2.7 KB for 2.3 KB), 2.7 GB at the default;
    # `effgate records export` reads it
    records_stream_maxlen: int = Field(1_000_000, gt=0)

    @field_validator("records_signatures", mode="before")
    @classmethod
    def _signatures_mode(cls, value: object) -> object:
        """true / false (the setting's first form) mean "all" / "off"."""
        if isinstance(value, bool):
            return "all" if value else "off"
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return "all"
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
            return "off"
        return value
