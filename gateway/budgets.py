"""Budgets and rate limits per tenant: reserve the worst case before the call, settle after.

Each tenant has up to four meters, one per window: ``usd_day`` (the UTC day), ``usd_month``
(the UTC month), ``rpm`` and ``tpm`` (the current UTC minute). A meter holds ``spent`` and
``held`` (reserved by requests in flight) in integer units: nano-USD, requests, tokens.

    reserve(tenant, worst-case USD, worst-case tokens)
        every meter: spent + held + amount <= limit, or 429 (``budget_exceeded`` with the
        window's reset as Retry-After; ``rate_limit_exceeded`` for rpm and tpm); then held +=
        amount on all of them, atomically
    settle(hold, real USD, real tokens)   after the call, success or failure
        held -= amount, spent += real (a failed call settles at what it really cost, 0)

Because the check and the hold are one atomic step, concurrent requests can never take a
meter past its limit by more than the worst case underestimates the real cost (the prompt
token estimate; the output is capped by ``max_tokens``).

With Redis the meters live there (two Lua scripts; one tenant's keys share the hash tag
``{t:<tenant>}`` so the scripts run on a Redis Cluster too) and every replica sees the
same totals. A hold whose replica dies before settling is released by the next reserve
after its deadline (``limits_hold_ttl_s``). Without Redis, the same arithmetic runs in
process memory.

If Redis fails (a timeout, a refused connection), ``limits_fail_mode`` decides:
``open`` (default) enforces on this replica from the last shared totals it saw plus what it
reserved since, and pushes what it spent to Redis when it is back (the reconcile);
``closed`` refuses metered requests with 503 ``limits_unavailable`` until Redis answers.
While down, Redis is retried after a backoff (0.5 s doubling to 5 s), never per request.

Meters, their windows and keys: ``gateway.meters``; the two Lua scripts:
``gateway.meter_scripts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import LimitsUnavailable, RateLimited
from gateway.meter_scripts import APPLY, RESERVE
from gateway.meters import DEPLOYMENT, NANO, Hold, Meter, MeterKind, holds_keys, meters, reject
from gateway.tenants import Tenant

log = logging.getLogger("effgate.budgets")

FailMode = Literal["open", "closed"]
MAX_PENDING_RELEASES = 10_000  # holds to release on Redis when it is back; past this they expire
_BACKOFF = (0.5, 1.0, 2.0, 5.0)


@dataclass(slots=True)
class _Local:
    spent: int = 0  # spent here since the last shared total was seen (may be negative)
    held: int = 0
    expires: float = 0.0


@dataclass(slots=True)
class LimitsCounters:
    """What the ledger tells the metrics (plain counters the collector reads on scrape)."""

    rejected: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, kind)
    store_errors: dict[str, int] = field(default_factory=dict)  # op
    reconciled_usd: float = 0.0
    released_expired: int = 0  # holds dropped from the release queue (they expire in Redis)


class Ledger:
    """Reserve and settle tenants' meters in Redis (shared) or in this process."""

    def __init__(
        self,
        redis: Any | None = None,
        *,
        fail_mode: FailMode = "open",
        hold_ttl_s: float = 900.0,
        timeout_s: float = 0.25,
        prefix: str = "effgate:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.fail_mode = fail_mode
        self._hold_ttl_s = hold_ttl_s
        self._timeout_s = timeout_s
        self._prefix = prefix
        self._clock = clock
        self._local: dict[str, _Local] = {}
        self._seen: dict[str, int] = {}  # meter key -> spent + held in Redis, last seen
        self._deltas: dict[str, tuple[int, int]] = {}  # meter key -> (spent to push, ttl)
        self._releases: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # id -> keys
        self._ratio: dict[str, tuple[float, float]] = {}  # tenant -> (budget share, when)
        self._down_until = 0.0
        self._failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = LimitsCounters()
        self._deployment: Tenant | None = None
        self._reserve = self._apply = None
        if redis is not None:
            self._reserve = redis.register_script(RESERVE)
            self._apply = redis.register_script(APPLY)

    # ------------------------------------------------------------------ state

    @property
    def shared(self) -> bool:
        """Whether meters are shared (Redis configured)."""
        return self._redis is not None

    @property
    def degraded(self) -> bool:
        """Redis is configured but was unreachable at the last try: enforcing locally."""
        return self._redis is not None and self._failures > 0

    def _up(self, now: float) -> bool:
        return self._redis is not None and now >= self._down_until

    def _fail(self, op: str, exc: BaseException) -> None:
        errors = self.counters.store_errors
        errors[op] = errors.get(op, 0) + 1
        if self._failures == 0:
            log.warning("limits: Redis unavailable (%s: %r); enforcing on this replica", op, exc)
        self._down_until = self._clock() + _BACKOFF[min(self._failures, len(_BACKOFF) - 1)]
        self._failures += 1

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self._timeout_s * 4):
            return await script(keys=keys, args=args)

    def deployment(self, usd_per_day: float) -> Tenant:
        """The pseudo-tenant whose meter is the policy's ``budget.daily_usd`` (everyone's)."""
        t = self._deployment
        if t is None or t.usd_per_day != usd_per_day:
            t = self._deployment = Tenant(DEPLOYMENT, usd_per_day=usd_per_day)
        return t

    # ------------------------------------------------------------------ reserve

    async def reserve(
        self, tenant: Tenant, usd: float, tokens: int, *, kinds: frozenset[MeterKind] | None = None
    ) -> Hold | None:
        """Hold ``usd`` and ``tokens`` (worst case) on the tenant's meters; None if it has none.

        Raises ``BudgetExceeded`` or ``RateLimited`` (429) when a meter would pass its limit,
        ``LimitsUnavailable`` (503) when Redis is down and limits fail closed.
        """
        now = self._clock()
        ms = meters(tenant, now, prefix=self._prefix)
        if kinds is not None:
            ms = tuple(m for m in ms if m.kind in kinds)
        if not ms:
            return None
        amounts = tuple(m.amount(usd, tokens, reserve=True) for m in ms)
        hold = Hold(uuid.uuid4().hex, tenant, ms, amounts, shared=False)
        if self._up(now) and (not self._failures or await self._reconcile()):
            try:
                return await self._reserve_shared(hold, now)
            except (RateLimited, LimitsUnavailable):
                raise
            except Exception as exc:  # a timeout, a refused connection, a Redis error
                self._fail("reserve", exc)
        if self._redis is not None and self.fail_mode == "closed":
            raise LimitsUnavailable(
                "Budgets and rate limits cannot be checked right now (shared store"
                " unavailable); retry shortly."
            )
        self._reserve_local(hold, now)
        return hold

    async def _reserve_shared(self, hold: Hold, now: float) -> Hold:
        assert self._reserve is not None
        holds, deadlines = holds_keys(hold.tenant, self._prefix)
        keys = [m.key for m in hold.meters] + [holds, deadlines]
        args: list[Any] = [hold.id, int(now * 1000), int((now + self._hold_ttl_s) * 1000)]
        for m, amount in zip(hold.meters, hold.amounts, strict=True):
            args += [amount, m.limit, int(m.reset_s) + m.ttl_s]
        out = [int(x) for x in await self._call(self._reserve, keys, args)]
        if out[0] == 0:
            meter = hold.meters[out[1] - 1]
            self._note_rejected(hold.tenant, meter)
            self._seen[meter.key] = out[2] + out[3]
            self._note_ratio(hold.tenant, {meter.key: out[2] + out[3]}, hold.meters)
            raise reject(hold.tenant, meter)
        used = {}
        for i, m in enumerate(hold.meters):
            used[m.key] = out[2 + 2 * i] + out[3 + 2 * i]
        self._seen.update(used)
        self._note_ratio(hold.tenant, used, hold.meters)
        hold.shared = True
        return hold

    def _reserve_local(self, hold: Hold, now: float) -> None:
        self._prune(now)
        used: dict[str, int] = {}
        for m, amount in zip(hold.meters, hold.amounts, strict=True):
            loc = self._local.get(m.key)
            total = self._seen.get(m.key, 0) + (loc.spent + loc.held if loc else 0)
            if m.limit >= 0 and total + amount > m.limit:
                self._note_rejected(hold.tenant, m)
                self._note_ratio(hold.tenant, {m.key: total}, hold.meters)
                raise reject(hold.tenant, m)
            used[m.key] = total + amount
        for m, amount in zip(hold.meters, hold.amounts, strict=True):
            loc = self._local.get(m.key)
            if loc is None:
                loc = self._local[m.key] = _Local(expires=now + m.reset_s + m.ttl_s)
            loc.held += amount
        self._note_ratio(hold.tenant, used, hold.meters)

    def _prune(self, now: float) -> None:
        if len(self._local) < 256:
            return
        for key in [k for k, v in self._local.items() if v.expires <= now]:
            del self._local[key]
            self._seen.pop(key, None)

    def _note_rejected(self, tenant: Tenant, meter: Meter) -> None:
        key = (tenant.name, meter.kind)
        self.counters.rejected[key] = self.counters.rejected.get(key, 0) + 1

    def _note_ratio(self, tenant: Tenant, used: dict[str, int], ms: tuple[Meter, ...]) -> None:
        shares = [
            used[m.key] / m.limit
            for m in ms
            if m.kind in ("usd_day", "usd_month") and m.limit > 0 and m.key in used
        ]
        if shares:
            self._ratio[tenant.name] = (max(shares), self._clock())

    # ------------------------------------------------------------------ settle

    def settle(self, hold: Hold, usd: float, tokens: int) -> None:
        """Release the hold and count what the request really used (once; later calls no-op)."""
        if hold.settled:
            return
        hold.settled = True
        actual = tuple(m.amount(usd, tokens, reserve=False) for m in hold.meters)
        if self._redis is None:
            self._settle_local(hold, actual)
            return
        task = asyncio.get_running_loop().create_task(self._settle_shared(hold, actual))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settle_local(self, hold: Hold, actual: tuple[int, ...]) -> None:
        for m, amount, real in zip(hold.meters, hold.amounts, actual, strict=True):
            loc = self._local.get(m.key)
            if loc is not None:
                loc.held = max(0, loc.held - amount)
                loc.spent += real
            if self._redis is not None and real:
                pushed, _ = self._deltas.get(m.key, (0, 0))
                self._deltas[m.key] = (pushed + real, int(m.reset_s) + m.ttl_s)

    async def _settle_shared(self, hold: Hold, actual: tuple[int, ...]) -> None:
        if not hold.shared:
            if self._up(self._clock()) and not self._failures:
                # reserved locally during an outage that has ended: count the spend in Redis
                await self._push(hold, "", actual)
            else:
                self._settle_local(hold, actual)
            return
        if self._up(self._clock()):
            await self._push(hold, hold.id, actual)
            return
        self._defer(hold, actual)

    async def _push(self, hold: Hold, hold_id: str, actual: tuple[int, ...]) -> None:
        assert self._apply is not None
        holds, deadlines = holds_keys(hold.tenant, self._prefix)
        args: list[Any] = [hold_id]
        for m, real in zip(hold.meters, actual, strict=True):
            args += [real, int(m.reset_s) + m.ttl_s]
        try:
            await self._call(self._apply, [holds, deadlines, *(m.key for m in hold.meters)], args)
        except Exception as exc:
            self._fail("settle", exc)
            if hold_id:
                self._defer(hold, actual)
            else:
                self._settle_local(hold, actual)

    def _defer(self, hold: Hold, actual: tuple[int, ...]) -> None:
        """Redis is down: release the hold there later; meanwhile count the spend here."""
        if len(self._releases) < MAX_PENDING_RELEASES:
            holds, deadlines = holds_keys(hold.tenant, self._prefix)
            self._releases[hold.id] = (holds, deadlines, tuple(m.key for m in hold.meters))
        else:
            self.counters.released_expired += 1  # its hold expires in Redis by its deadline
        for m, amount, real in zip(hold.meters, hold.amounts, actual, strict=True):
            # the shared total seen at reserve time included this hold: replace it by the cost
            loc = self._local.get(m.key)
            if loc is None:
                loc = self._local[m.key] = _Local(expires=self._clock() + m.reset_s + m.ttl_s)
            loc.spent += real - amount
            if real:
                pushed, _ = self._deltas.get(m.key, (0, 0))
                self._deltas[m.key] = (pushed + real, int(m.reset_s) + m.ttl_s)

    async def _reconcile(self) -> bool:
        """Redis is back: push the spend counted here and release the holds left there."""
        assert self._apply is not None
        try:
            for hold_id, (holds, deadlines, keys) in list(self._releases.items()):
                await self._call(
                    self._apply, [holds, deadlines, *keys], [hold_id] + [0, 0] * len(keys)
                )
                del self._releases[hold_id]
            for key, (units, ttl) in list(self._deltas.items()):
                tenant_tag = key[len(self._prefix) :].split("}", 1)[0] + "}"
                holds = self._prefix + tenant_tag + ":holds"
                deadlines = self._prefix + tenant_tag + ":deadlines"
                await self._call(self._apply, [holds, deadlines, key], ["", units, ttl])
                del self._deltas[key]
                if ":usd_day:" in key:
                    self.counters.reconciled_usd += units / NANO
        except Exception as exc:
            self._fail("reconcile", exc)
            return False
        if self._failures:
            log.warning("limits: Redis is back; spend counted during the outage reconciled")
        self._failures = 0
        self._local.clear()
        self._seen.clear()
        return True

    # ------------------------------------------------------------------ reading

    def pressure(self, tenant: Tenant, *, max_age_s: float = 1.0) -> float | None:
        """The tenant's budget share used (spent + held over the tightest USD limit), as this
        replica last saw it; None when unknown or older than ``max_age_s``."""
        seen = self._ratio.get(tenant.name)
        if seen is None or self._clock() - seen[1] > max_age_s:
            return None
        return seen[0]

    async def usage(self, tenant: Tenant) -> dict[str, Any]:
        """Each meter's limit, spent, held and remaining, in its own units (USD for budgets)."""
        now = self._clock()
        ms = meters(tenant, now, prefix=self._prefix)
        values: dict[str, tuple[int, int]] = {}
        source = "local"
        if ms and self._up(now) and not self._failures:
            try:
                async with asyncio.timeout(self._timeout_s * 4):
                    for m in ms:
                        spent, held = await self._redis.hmget(m.key, "spent", "held")  # type: ignore[union-attr]
                        values[m.key] = (int(spent or 0), int(held or 0))
                source = "shared"
            except Exception as exc:
                self._fail("read", exc)
                values.clear()
        out: dict[str, Any] = {"source": source}
        for m in ms:
            if m.key in values:
                spent, held = values[m.key]
            else:
                loc = self._local.get(m.key) or _Local()
                seen = self._seen.get(m.key, 0)
                spent, held = seen + loc.spent, loc.held
            scale = NANO if m.kind in ("usd_day", "usd_month") else 1
            limit = None if m.limit < 0 else m.limit / scale
            out[m.kind] = {
                "limit": limit,
                "spent": spent / scale,
                "held": held / scale,
                "remaining": None if limit is None else max(0.0, (m.limit - spent - held) / scale),
                "resets_in_s": round(m.reset_s, 3),
            }
        used = [(values[m.key][0] + values[m.key][1]) if m.key in values else None for m in ms]
        shares = [
            u / m.limit
            for m, u in zip(ms, used, strict=True)
            if u is not None and m.kind in ("usd_day", "usd_month") and m.limit > 0
        ]
        if shares:
            self._ratio[tenant.name] = (max(shares), now)
        return out

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Wait for settles in flight, then try once more to reconcile what Redis missed."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None and (self._deltas or self._releases):
            self._down_until = 0.0
            await self._reconcile()
