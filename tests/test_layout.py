"""The package layout docs/architecture.md draws, held by the imports themselves.

Imports point one way: gateway -> {policies, router_models}; policies -> router_models only
for the IRT formula and the offline tools; router_models and fake_upstream import none of the
others. The request path never reaches the offline families (gateway.report, gateway.cli) or
the fake upstreams. Every import is counted, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "policies", "router_models", "fake_upstream")
OFFLINE = ("gateway.report", "gateway.cli")
# policies modules allowed to reach into router_models, and for what
POLICIES_TO_ROUTER_MODELS = {
    "policies.engine": {"router_models.irt"},
    "policies.check": {"router_models"},
    "policies.replay": {"router_models", "router_models.features"},
    "policies.replay_data": {"router_models.data"},
}


def _modules() -> dict[str, set[str]]:
    """Every module of ours -> the modules of ours it imports (anywhere in its body)."""
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            name = name.removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps.add(node.module)
                    deps.update(f"{node.module}.{a.name}" for a in node.names)
            out[name] = {d for d in deps if d.split(".")[0] in PACKAGES}
    return out


MODULES = _modules()


def _top(name: str) -> str:
    return name.split(".")[0]


def _is(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _known(name: str) -> bool:
    """``from a.b import c`` adds both a.b and a.b.c: keep only names that are modules."""
    return name in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module: str) -> None:
    deps = {d for d in MODULES[module] if _known(d)}
    top = _top(module)
    foreign = {d for d in deps if _top(d) != top}
    if top == "gateway":
        bad = {d for d in foreign if _top(d) == "fake_upstream"}
        if not _is(module, "gateway.cli"):  # the demo and `effgate fake-upstream` run them
            assert not bad, f"{module} imports the fake upstreams: {sorted(bad)}"
    elif top == "policies":
        allowed = POLICIES_TO_ROUTER_MODELS.get(module, set())
        assert foreign <= allowed, f"{module} imports {sorted(foreign - allowed)}"
    else:  # router_models and fake_upstream stand alone
        assert not foreign, f"{module} imports {sorted(foreign)}"


SERVING = sorted(m for m in MODULES if _top(m) == "gateway" and not any(_is(m, o) for o in OFFLINE))


def test_the_serving_modules_are_found() -> None:
    assert {"gateway.app", "gateway.lifecycle", "gateway.upstreams.pool"} <= set(SERVING)


@pytest.mark.parametrize("module", SERVING)
def test_the_request_path_never_reaches_offline_code(module: str) -> None:
    deps = {d for d in MODULES[module] if _known(d)}
    offline = {d for d in deps if any(_is(d, o) for o in OFFLINE)}
    assert not offline, f"{module} (request path) imports {sorted(offline)}"


def test_the_architecture_doc_names_every_gateway_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        m
        for m in sorted(MODULES)
        if _top(m) in ("gateway", "fake_upstream")
        and m.rsplit(".", 1)[-1] not in ("__main__",)
        and f"`{m.removeprefix('gateway.')}`" not in doc
        and f"`{m}`" not in doc
    ]
    assert not missing, f"docs/architecture.md does not mention: {missing}"
