"""A tenant's meters and a request's hold on them: windows, units, keys, and the 429s.

A meter counts one tenant's use in one window: ``usd_day`` (the UTC day), ``usd_month`` (the
UTC month), ``rpm`` and ``tpm`` (the current UTC minute), in integer units: nano-USD,
requests, tokens. Its key names the window, so a new window starts at zero and the old key
expires; every key of one tenant shares the hash tag ``{t:<tenant>}``, its holds and their
deadlines too. A full meter answers 429 (``reject``). ``gateway.budgets`` reserves and
settles them.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.errors import BudgetExceeded, RateLimited
from gateway.tenants import Tenant

MeterKind = Literal["usd_day", "usd_month", "rpm", "tpm"]
NANO = 1_000_000_000  # units per USD
DEPLOYMENT = "_deployment"  # the meter of the policy's budget.daily_usd, across tenants
RPM_ONLY: frozenset[MeterKind] = frozenset({"rpm"})


@dataclass(frozen=True, slots=True)
class Meter:
    """One of a tenant's meters in its current window."""

    kind: MeterKind
    key: str
    limit: int  # units; -1: tracked, no limit
    reset_s: float  # seconds until the window rolls over
    ttl_s: int  # how long the key outlives the window

    def amount(self, usd: float, tokens: int, *, reserve: bool) -> int:
        if self.kind == "rpm":
            return 1
        if self.kind == "tpm":
            return max(0, int(tokens))
        units = usd * NANO
        return max(0, math.ceil(units) if reserve else round(units))


@dataclass(slots=True)
class Hold:
    """What a request reserved, to settle once it is done."""

    id: str
    tenant: Tenant
    meters: tuple[Meter, ...]
    amounts: tuple[int, ...]
    shared: bool  # reserved in Redis (else in this replica's memory)
    settled: bool = False


def tag(name: str) -> str:
    """The tenant's part of a key: its name when plain, else a digest (no braces in a tag)."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        return name
    return "h" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def meters(tenant: Tenant, now: float, *, prefix: str = "effgate:") -> tuple[Meter, ...]:
    """The tenant's meters in the windows that hold ``now`` (only those it has)."""
    t = datetime.fromtimestamp(now, UTC)
    base = f"{prefix}{{t:{tag(tenant.name)}}}:"
    out: list[Meter] = []
    if tenant.tracked or tenant.usd_per_day is not None:
        end = calendar.timegm((t.year, t.month, t.day, 0, 0, 0)) + 86400
        limit = -1 if tenant.usd_per_day is None else math.floor(tenant.usd_per_day * NANO)
        out.append(Meter("usd_day", f"{base}usd_day:{t:%Y%m%d}", limit, end - now, 2 * 86400))
    if tenant.tracked or tenant.usd_per_month is not None:
        ny, nm = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
        end = calendar.timegm((ny, nm, 1, 0, 0, 0))
        limit = -1 if tenant.usd_per_month is None else math.floor(tenant.usd_per_month * NANO)
        out.append(Meter("usd_month", f"{base}usd_month:{t:%Y%m}", limit, end - now, 32 * 86400))
    minute = int(now // 60)
    reset = (minute + 1) * 60 - now
    if tenant.rpm is not None:
        out.append(Meter("rpm", f"{base}rpm:{minute}", tenant.rpm, reset, 120))
    if tenant.tpm is not None:
        out.append(Meter("tpm", f"{base}tpm:{minute}", tenant.tpm, reset, 120))
    return tuple(out)


def holds_keys(tenant: Tenant, prefix: str) -> tuple[str, str]:
    """The keys of the tenant's ``holds`` hash and ``deadlines`` sorted set (its tag too)."""
    base = f"{prefix}{{t:{tag(tenant.name)}}}:"
    return base + "holds", base + "deadlines"


def reject(tenant: Tenant, meter: Meter) -> RateLimited:
    """The 429 for a meter the request would take past its limit; Retry-After: its reset."""
    retry = max(1, math.ceil(meter.reset_s))
    if meter.kind == "rpm":
        return RateLimited(
            f"Rate limit of {tenant.rpm} requests per minute reached for tenant {tenant.name!r}.",
            retry_after_s=retry,
        )
    if meter.kind == "tpm":
        return RateLimited(
            f"Rate limit of {tenant.tpm} tokens per minute reached for tenant {tenant.name!r}"
            " (this request's prompt and its max_tokens count).",
            retry_after_s=retry,
        )
    if tenant.name == DEPLOYMENT:
        return BudgetExceeded(
            f"The deployment's daily budget of {tenant.usd_per_day} USD (the policy's"
            " budget.daily_usd) does not cover this request's worst-case cost.",
            retry_after_s=retry,
        )
    window = "daily" if meter.kind == "usd_day" else "monthly"
    usd = tenant.usd_per_day if meter.kind == "usd_day" else tenant.usd_per_month
    return BudgetExceeded(
        f"The {window} budget of {usd} USD for tenant {tenant.name!r} does not cover this"
        " request's worst-case cost.",
        retry_after_s=retry,
    )
