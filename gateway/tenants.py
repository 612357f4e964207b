"""Tenants and their virtual keys: a YAML file (``EFFGATE_TENANTS_PATH``), validated and watched.

    version: 1
    tenants:
      - name: team-a
        keys_sha256: ["<hex sha256 of the key>"]
        routes: [auto, code]                  # optional; default: every route and model
        quality_bar: {min: 0.6, max: 0.9}     # optional bounds on what requests may ask
        budget: {usd_per_day: 25.0, usd_per_month: 500.0}
        limits: {rpm: 600, tpm: 200000, max_tokens: 4096}
        on_budget_pressure: {at: 0.8, quality_bar: 0.6}
    admin_keys_sha256: ["<hex>"]

Keys are never stored: the file holds their sha256 and a request's key is looked up by its
digest (``effgate keys new --tenant T`` prints a fresh key once, and the line to paste).
Errors name the file and line like the policy's (``tenants.yaml:7: tenants[0].budget...``);
a file that fails to load never replaces a good one. ``EFFGATE_API_KEYS`` (key -> tenant,
no limits) keeps working beside it, for the simple case.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from policies.compiled import Limits as InputLimits
from policies.errors import PolicyLoadError, format_loc
from policies.loader import line_of, parse_yaml, read_bytes, validation_error
from policies.store import WatchedFile

KEY_PREFIX = "eg-"
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BarBounds(_Strict):
    min: Share = 0.0
    max: Share = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> BarBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class Budget(_Strict):
    usd_per_day: Positive | None = None
    usd_per_month: Positive | None = None


class Limits(_Strict):
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    # input caps over the route's (policies' limits): the stricter of both applies
    max_messages: Annotated[int, Field(gt=0)] | None = None
    max_chars: Annotated[int, Field(gt=0)] | None = None


class Pressure(_Strict):
    at: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
    quality_bar: Share


class TenantSpec(_Strict):
    name: Name
    keys_sha256: list[Digest] = Field(min_length=1)
    routes: list[str] | None = None
    quality_bar: BarBounds | None = None
    budget: Budget | None = None
    limits: Limits | None = None
    on_budget_pressure: Pressure | None = None

    @model_validator(mode="after")
    def _pressure_needs_budget(self) -> TenantSpec:
        if self.on_budget_pressure is not None and (
            self.budget is None
            or (self.budget.usd_per_day, self.budget.usd_per_month) == (None, None)
        ):
            raise ValueError("on_budget_pressure needs a budget (usd_per_day or usd_per_month)")
        bars = self.quality_bar
        pressure = self.on_budget_pressure
        if (
            bars is not None
            and pressure is not None
            and not (bars.min <= pressure.quality_bar <= bars.max)
        ):
            raise ValueError(
                f"on_budget_pressure.quality_bar ({pressure.quality_bar}) is outside"
                f" quality_bar [{bars.min}, {bars.max}]"
            )
        return self


class TenantsFile(_Strict):
    version: Literal[1]
    tenants: list[TenantSpec] = Field(default_factory=list)
    admin_keys_sha256: list[Digest] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant as requests see it (built from the file, or a bare one for EFFGATE_API_KEYS)."""

    name: str
    routes: frozenset[str] | None = None  # route names and catalog ids it may use; None: all
    bar_min: float = 0.0
    bar_max: float = 1.0
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    pressure_at: float | None = None
    pressure_bar: float | None = None
    # its spend is counted per day and month even without a budget (tenants-file tenants:
    # GET /v1/tenants/me shows it); EFFGATE_API_KEYS tenants only count what they limit
    tracked: bool = False
    # its caps on a request's input (messages, characters, max_tokens), or None
    input_limits: InputLimits | None = None

    @property
    def metered(self) -> bool:
        """Whether its requests reserve anything (spend, requests or tokens per minute)."""
        return (
            self.tracked
            or self.usd_per_day is not None
            or self.usd_per_month is not None
            or self.rpm is not None
            or self.tpm is not None
        )

    @property
    def restricts(self) -> bool:
        """Whether it shapes requests (routes, bar bounds, max_tokens, budget pressure)."""
        return (
            self.routes is not None
            or self.max_tokens is not None
            or (self.bar_min, self.bar_max) != (0.0, 1.0)
            or self.pressure_at is not None
        )

    def describe(self) -> dict[str, Any]:
        """Its configuration as ``GET /v1/tenants/me`` shows it (no keys)."""
        return {
            "name": self.name,
            "routes": sorted(self.routes) if self.routes is not None else None,
            "quality_bar": {"min": self.bar_min, "max": self.bar_max},
            "budget": {"usd_per_day": self.usd_per_day, "usd_per_month": self.usd_per_month},
            "limits": {
                "rpm": self.rpm,
                "tpm": self.tpm,
                "max_tokens": self.max_tokens,
                "max_messages": self.input_limits.max_messages if self.input_limits else None,
                "max_chars": self.input_limits.max_chars if self.input_limits else None,
            },
            "on_budget_pressure": None
            if self.pressure_at is None
            else {"at": self.pressure_at, "quality_bar": self.pressure_bar},
        }


DEFAULT_TENANT = Tenant("default")
ADMIN = Tenant("admin")  # the principal of an admin key on an admin endpoint


@dataclass(frozen=True, slots=True)
class Tenants:
    """A loaded tenants file: tenants by key digest, admin key digests, its content hash."""

    by_digest: Mapping[str, Tenant]
    by_name: Mapping[str, Tenant]
    admin: frozenset[str]
    sha256: str = ""
    path: str = ""
    # EFFGATE_API_KEYS, digested once: key -> tenant without limits
    plain: Mapping[str, Tenant] = field(default_factory=dict)


def digest(key: str) -> str:
    """The sha256 hex digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _tenant(spec: TenantSpec, default_rpm: int | None = None) -> Tenant:
    bars = spec.quality_bar or BarBounds()
    budget = spec.budget or Budget()
    limits = spec.limits or Limits()
    pressure = spec.on_budget_pressure
    return Tenant(
        name=spec.name,
        routes=frozenset(spec.routes) if spec.routes is not None else None,
        bar_min=bars.min,
        bar_max=bars.max,
        usd_per_day=budget.usd_per_day,
        usd_per_month=budget.usd_per_month,
        rpm=limits.rpm if limits.rpm is not None else default_rpm,
        tpm=limits.tpm,
        max_tokens=limits.max_tokens,
        pressure_at=pressure.at if pressure else None,
        pressure_bar=pressure.quality_bar if pressure else None,
        tracked=True,
        input_limits=InputLimits(limits.max_messages, limits.max_chars, limits.max_tokens)
        if (limits.max_messages, limits.max_chars, limits.max_tokens) != (None, None, None)
        else None,
    )


def build_tenants(data: bytes, *, path: str, default_rpm: int | None = None) -> Tenants:
    """Validate a tenants file's bytes; ``PolicyLoadError`` lists every ``file:line`` problem."""
    document, lines = parse_yaml(data, filename=path)
    if document is None:
        raise PolicyLoadError(
            [f"{path}:1: the file is empty; expected a tenants file (version: 1)"]
        )
    try:
        spec = TenantsFile.model_validate(document)
    except ValidationError as exc:
        raise validation_error(exc, lines, filename=path) from None
    problems: list[str] = []
    names: dict[str, int] = {}
    owner: dict[str, tuple[str | int, ...]] = {}
    for i, t in enumerate(spec.tenants):
        if t.name in names:
            loc: tuple[str | int, ...] = ("tenants", i, "name")
            problems.append(
                f"{path}:{line_of(lines, loc)}: {format_loc(loc)}: tenant {t.name!r} is already"
                f" defined at tenants[{names[t.name]}]"
            )
        names.setdefault(t.name, i)
        for j, d in enumerate(t.keys_sha256):
            loc = ("tenants", i, "keys_sha256", j)
            if d in owner:
                problems.append(
                    f"{path}:{line_of(lines, loc)}: {format_loc(loc)}: this key digest is"
                    f" already listed at {format_loc(owner[d])}"
                )
            owner.setdefault(d, loc)
    for j, d in enumerate(spec.admin_keys_sha256):
        loc = ("admin_keys_sha256", j)
        if d in owner and owner[d][0] == "tenants":
            problems.append(
                f"{path}:{line_of(lines, loc)}: {format_loc(loc)}: an admin key must not also"
                f" be a tenant's key ({format_loc(owner[d])})"
            )
    if problems:
        raise PolicyLoadError(problems)
    by_digest: dict[str, Tenant] = {}
    by_name: dict[str, Tenant] = {}
    for t in spec.tenants:
        tenant = _tenant(t, default_rpm)
        by_name[tenant.name] = tenant
        for d in t.keys_sha256:
            by_digest[d] = tenant
    return Tenants(
        by_digest=by_digest,
        by_name=by_name,
        admin=frozenset(spec.admin_keys_sha256),
        sha256=hashlib.sha256(data).hexdigest(),
        path=path,
    )


def plain_keys(api_keys: Mapping[str, str], default_rpm: int | None = None) -> dict[str, Tenant]:
    """EFFGATE_API_KEYS (key -> tenant name) as digest -> a tenant with only the default rpm."""
    return {digest(key): Tenant(name, rpm=default_rpm) for key, name in api_keys.items()}


class TenantStore(WatchedFile[Tenants]):
    """The live tenants file, reloaded like the policy (a bad file never replaces a good one)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_reload: Callable[[Literal["ok", "error"], Tenants | None, str | None], None]
        | None = None,
        default_rpm: int | None = None,
    ) -> None:
        p = os.fspath(path)
        super().__init__(
            p,
            build=lambda data: build_tenants(data, path=p, default_rpm=default_rpm),
            sha_of=lambda t: t.sha256,
            on_reload=on_reload,
            what="tenants file",
        )


def new_key() -> str:
    """A fresh client key: ``eg-`` and 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check(path: str) -> list[str]:
    """The problems of a tenants file (empty when it loads)."""
    try:
        build_tenants(read_bytes(path), path=path)
    except PolicyLoadError as exc:
        return list(exc.errors)
    return []


def main(argv: list[str] | None = None) -> int:
    """``effgate keys new --tenant T`` and ``effgate keys hash``, ``effgate tenants check FILE``."""
    parser = argparse.ArgumentParser(prog="effgate keys")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="print a fresh key once, and its line for the tenants file")
    new.add_argument("--tenant", required=True, help="the tenant the key is for")
    sub.add_parser("hash", help="read a key on stdin and print its sha256 (for keys_sha256)")
    chk = sub.add_parser("check", help="validate tenants files offline")
    chk.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "new":
        key = new_key()
        print(f"key (shown once; store it in your secret manager): {key}")
        print(f"tenants file, under tenant {args.tenant!r}:")
        print(f'    keys_sha256: ["{digest(key)}"]')
        return 0
    if args.command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("effgate keys hash: no key on stdin", file=sys.stderr)
            return 2
        print(digest(key))
        return 0
    failed = 0
    for path in args.files:
        problems = check(path)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0
