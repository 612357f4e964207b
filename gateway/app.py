"""create_app(settings) -> the ASGI app. The lifespan builds every resource and closes it again.

Resources are entered on one ``AsyncExitStack`` as they are built, so a start-up that fails
half way (a bad record directory, an unreachable Redis) closes what it had already opened, and
shutdown closes everything in reverse order: first it waits (``SETTLE_S``) for requests cut
at uvicorn's shutdown deadline to account for themselves, then the policy watcher, the record
log (flushed), the upstream clients, the store, NVML.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.accountant import Accountant
from gateway.budgets import Ledger
from gateway.edge import GatewayApp
from gateway.gpu import GPUCollector
from gateway.health import Health
from gateway.kv import KV, MemoryKV, RedisKV, StoreStats
from gateway.metrics import CircuitCollector, LimitsCollector, Metrics, StoreCollector
from gateway.records import JSONLFile, RecordLog
from gateway.scoring import EstimatorStore
from gateway.series import GaugeValue
from gateway.settings import Settings
from gateway.shadow import Evaluator
from gateway.state import AppState
from gateway.tenants import Tenant, Tenants, TenantStore, plain_keys
from gateway.tokens import TokenCounter
from gateway.upstreams.pool import Factory, UpstreamPool, default_factory
from policies.compiled import CompiledPolicy
from policies.store import PolicyStore

log = logging.getLogger("effgate")


def load_estimator(settings: Settings) -> Any:
    """The estimator ``settings`` name (the shipped default when none)."""
    import router_models

    path = str(settings.estimator_path) if settings.estimator_path else None
    return router_models.load_estimator(path)


def _load_artifact(path: Path) -> Any:
    import router_models

    return router_models.load_estimator(path)


def create_app(
    settings: Settings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    upstream_factory: Factory | None = None,
    estimator: Any | None = None,
    kv: KV | None = None,
) -> GatewayApp:
    """Build the gateway app. Seams (registry, upstream factory, estimator, kv) are for tests."""
    settings = settings or Settings()
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await _start(app, stack)
            yield

    async def _start(app: GatewayApp, stack: contextlib.AsyncExitStack) -> None:
        est = estimator or load_estimator(settings)
        skills = dict(getattr(est, "skills", {}))
        discrimination = float(getattr(est, "discrimination", 1.0))
        health = Health(failures=settings.circuit_failures, cooldown_s=settings.circuit_cooldown_s)
        pool = UpstreamPool(
            upstream_factory or default_factory(settings.pool_timeout_s, settings.http_client)
        )

        def on_reload(result: str, policy: CompiledPolicy | None, error: str | None) -> None:
            metrics.policy_reloads.labels(result).inc()
            if policy is not None:
                pool.sync(policy)
                metrics.set_policy(policy.sha256, policy.version, policy.budget_daily_usd)
                log.info("policy loaded: %s (sha256 %s)", policy.path, policy.sha256[:12])
            else:
                log.error("policy reload failed, keeping the running policy: %s", error)

        store = PolicyStore(
            settings.policy_path, skills=skills, discrimination=discrimination, on_reload=on_reload
        )

        def on_estimator(result: str, new: Any, error: str | None) -> None:
            metrics.estimator_reloads.labels(result).inc()
            if new is not None:
                metrics.set_estimator(estimators.sha256, getattr(new, "heads", None) is not None)

        estimators = EstimatorStore(
            est,
            policies=store,
            path=settings.estimator_path,
            load=_load_artifact,
            on_reload=on_estimator,
        )
        metrics.set_estimator(estimators.sha256, getattr(est, "heads", None) is not None)
        # the policy first: a file that does not load must leave nothing open behind it
        stack.push_async_callback(pool.aclose)
        store_kv = kv or _build_kv(settings, metrics)
        stack.push_async_callback(store_kv.aclose)
        if isinstance(store_kv, RedisKV) and not await store_kv.ping():
            # connecting (on a cluster, discovering the slots) now, not on the first request's
            # clock; a Redis that does not answer is the usual fallback, said once here
            log.warning("redis did not answer at startup; serving on the in-process fallback")
        redis_client = (
            store_kv.client
            if isinstance(store_kv, RedisKV) and settings.records_redis_stream
            else None
        )
        records = RecordLog(
            file=JSONLFile(
                settings.records_dir,
                max_bytes=settings.records_max_bytes,
                backups=settings.records_backups,
            )
            if settings.records_dir is not None
            else None,
            redis=redis_client,
            stream=settings.records_redis_stream,
            buffer=settings.records_buffer,
            on_drop=lambda sink: metrics.records_dropped.labels(sink).inc(),
            buffer_bytes=settings.records_buffer_bytes,
            stream_max_bytes=settings.records_stream_max_bytes,
            stream_maxlen=settings.records_stream_maxlen,
            timeout_s=settings.redis_timeout_s,
            retry_s=settings.redis_retry_s,
            retry_max_s=settings.redis_retry_max_s,
        )
        stack.push_async_callback(records.aclose)  # flushes what is queued, then closes
        stores = StoreCollector(lambda: _store_stats(store_kv, records))
        registry.register(stores)
        stack.callback(registry.unregister, stores)

        tokens = TokenCounter.load()
        stack.callback(tokens.close)
        policy = store.current
        pool.sync(policy)
        metrics.set_policy(policy.sha256, policy.version, policy.budget_daily_usd)
        circuits = CircuitCollector(health.state, lambda: store.current.models.keys())
        registry.register(circuits)
        stack.callback(registry.unregister, circuits)
        gpu = _register_gpu(registry, store, metrics)
        stack.callback(registry.unregister, gpu)
        stack.callback(gpu.close)
        evaluator = Evaluator(
            upstream=pool.get,
            metrics=metrics,
            records=records,
            kv=store_kv,
            tokens=tokens,
            observe=metrics.observe_outcome,
        )
        # closed before the record log (the stack unwinds in reverse): labels still land
        stack.push_async_callback(evaluator.aclose)
        accountant = Accountant(
            metrics=metrics,
            health=health,
            kv=store_kv,
            records=records,
            ttl_s=settings.feedback_ttl_s,
            evaluator=evaluator,
            signatures=settings.records_signatures,
        )
        tenants = _tenant_store(settings, metrics)
        ledger = Ledger(
            store_kv.client if isinstance(store_kv, RedisKV) else None,
            fail_mode=settings.limits_fail_mode,
            hold_ttl_s=settings.limits_hold_ttl_s,
            timeout_s=settings.redis_timeout_s,
        )
        stack.push_async_callback(ledger.aclose)  # settles in flight, a last reconcile
        metrics.max_tenants = settings.metrics_max_tenants

        def budgets() -> list[tuple[str, str, float]]:
            live = tenants.current.by_name.values() if tenants is not None else ()
            out = [(t.name, "day", t.usd_per_day) for t in live if t.usd_per_day is not None]
            out += [(t.name, "month", t.usd_per_month) for t in live if t.usd_per_month]
            return out

        limits = LimitsCollector(
            lambda: ledger.counters, lambda: ledger.degraded, budgets, metrics.tenant_label
        )
        registry.register(limits)
        stack.callback(registry.unregister, limits)
        state = AppState(
            settings=settings,
            policies=store,
            estimator=estimators,
            upstreams=pool,
            health=health,
            metrics=metrics,
            kv=store_kv,
            records=records,
            accountant=accountant,
            tokens=tokens,
            evaluator=evaluator,
            ledger=ledger,
            tenants=tenants,
            plain_keys=plain_keys(settings.api_keys, settings.rate_limit_rpm),
            default_tenant=Tenant("default", rpm=settings.rate_limit_rpm),
        )
        app.state.effgate = state
        records.start()
        watcher = asyncio.create_task(store.watch(settings.policy_poll_s), name="policy-watch")
        stack.push_async_callback(_cancel, watcher)
        if settings.estimator_path is not None:
            est_watch = asyncio.create_task(
                estimators.watch(settings.policy_poll_s), name="estimator-watch"
            )
            stack.push_async_callback(_cancel, est_watch)
        if tenants is not None:
            t_watch = asyncio.create_task(tenants.watch(settings.policy_poll_s), name="tenants")
            stack.push_async_callback(_cancel, t_watch)
        stack.callback(_on_sighup(state.reload_all))
        state.ready = True
        stack.callback(setattr, state, "ready", False)
        # unwound first: requests cut at the shutdown deadline account before records close
        stack.push_async_callback(_settle, metrics.in_flight)

    return GatewayApp(lifespan)


def _tenant_store(settings: Settings, metrics: Metrics) -> TenantStore | None:
    if settings.tenants_path is None:
        return None

    def on_reload(result: str, tenants: Tenants | None, error: str | None) -> None:
        metrics.tenants_reloads.labels(result).inc()
        if tenants is not None:
            log.info("tenants loaded: %s (%d tenants)", tenants.path, len(tenants.by_name))
        else:
            log.error("tenants reload failed, keeping the running tenants: %s", error)

    return TenantStore(
        settings.tenants_path, on_reload=on_reload, default_rpm=settings.rate_limit_rpm
    )


# after uvicorn cancels what outlived the shutdown deadline, how long those requests may take
# to unwind (each records itself, see lifecycle.serve and the relay) before the log closes
SETTLE_S = 5.0


async def _settle(in_flight: GaugeValue) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    # polled, once at shutdown: an event set by the last request would cost every request
    while in_flight.value > 0 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if in_flight.value > 0:
        log.error(
            "%d request(s) still running at shutdown; their records are lost", in_flight.value
        )


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _build_kv(settings: Settings, metrics: Metrics) -> KV:
    if settings.redis_url is None:
        return MemoryKV(
            max_bytes=settings.memory_kv_max_bytes, max_items=settings.feedback_max_items
        )
    return RedisKV(
        settings.redis_url.get_secret_value(),
        timeout_s=settings.redis_timeout_s,
        on_fallback=lambda op: metrics.store_fallbacks.labels(op).inc(),
        local_max_bytes=settings.memory_kv_max_bytes,
        pending_max_bytes=settings.redis_pending_max_bytes,
        retry_s=settings.redis_retry_s,
        retry_max_s=settings.redis_retry_max_s,
    )


def _store_stats(kv: KV, records: RecordLog) -> list[StoreStats]:
    """Every bounded store's numbers (a ``kv`` injected by a test may have none)."""
    own = getattr(kv, "store_stats", None)
    stats: list[StoreStats] = list(own()) if callable(own) else []
    return stats + records.store_stats()


def _register_gpu(
    registry: CollectorRegistry, store: PolicyStore, metrics: Metrics
) -> GPUCollector:
    def model_gpus() -> dict[str, tuple[int, ...]]:
        return {m.id: m.local_gpus for m in store.current.models.values() if m.local_gpus}

    def output_tokens() -> dict[str, float]:
        totals: dict[str, float] = {}
        for (_route, model, direction), value in metrics.tokens.values.items():
            if direction == "output":
                totals[model] = totals.get(model, 0.0) + value
        return totals

    collector = GPUCollector(model_gpus=model_gpus, output_tokens=output_tokens)
    registry.register(collector)
    return collector


def _on_sighup(reload: Callable[[], object]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.call_soon(reload))
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)

    return restore
