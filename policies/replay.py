"""``effgate eval --policy F --data F.jsonl``: replay a labelled dataset through a policy.

Each prompt gets the estimator's difficulty and goes through the same ``decide()`` the
gateway runs. The chosen catalog model's quality is the data label of the data model
mapped to it (same name as the catalog id or upstream_model, or ``--map data=catalog``).
The policy is compared with always sending everything to the route's reference model and
to each single candidate. Cost = catalog prices x the data's token counts, estimated from
characters / 4 where the data has none. Prompts whose chosen model has no label are counted
and reported per model, never silently dropped. The dataset is parsed by ``router_models.data``
(through ``replay_data``); the estimator and the rules' prompt text are imported when needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from policies.compiled import CompiledPolicy, ModelEntry
from policies.engine import NoEligibleModel, RouteInput, decide, p_acceptable
from policies.errors import PolicyLoadError
from policies.loader import load_policy
from policies.replay_data import (
    DatasetError,
    Label,
    Prompt,
    data_models,
    estimate_tokens,
    read_prompts,
)


class Estimator(Protocol):
    """What a replay needs from ``router_models.Estimator``."""

    @property
    def skills(self) -> Mapping[str, float]:
        """Fitted skills of the models seen in training."""
        ...

    @property
    def discrimination(self) -> float:
        """The IRT discrimination ``a`` of P = sigmoid(a * (skill - difficulty))."""
        ...

    def difficulty(self, messages: Sequence[Any]) -> float:
        """How hard a chat request is, on the skills' scale."""
        ...


EstimatorLoader = Callable[[str | None], Estimator]
PromptText = Callable[[Sequence[Any]], str]
# (messages, task) -> (difficulty, P by catalog id or None): a route's scorer, as the gateway
# runs it (`router_models.Estimator.scorer`: learned heads where the artifact has them)
RouteScore = Callable[[Sequence[Any], str | None], tuple[float, Mapping[str, float] | None]]


class ReplayError(ValueError):
    """Bad arguments for a replay (unknown route, bad --map)."""


def shipped_estimator(artifact: str | None) -> Estimator:
    """``router_models.load_estimator(artifact)``: the shipped artifact when None."""
    from router_models import ArtifactError, load_estimator

    try:
        return load_estimator(artifact)
    except ArtifactError as exc:
        raise ReplayError(f"estimator: {exc}") from None


def route_scorer(
    est: Estimator, scored: Sequence[ModelEntry]
) -> tuple[RouteScore | None, tuple[str, ...]]:
    """The route's scorer as the gateway builds it (`gateway.scoring`), and the catalog ids
    it has learned heads for; (None, ()) for an estimator without heads for any of them."""
    make = getattr(est, "scorer", None)
    if make is None:
        return None, ()
    scorer = make([(m.id, m.upstream_model) for m in scored])
    heads = tuple(scorer.learned)
    if not heads:
        return None, ()

    def score(messages: Sequence[Any], task: str | None) -> tuple[float, Any]:
        return scorer(messages, None, task)  # type: ignore[no-any-return]

    return score, heads


def rules_text(messages: Sequence[Any]) -> str:
    """``router_models.features.prompt_text``: the text rules match on, as in the gateway."""
    from router_models.features import prompt_text

    return prompt_text(messages)


def resolve_mapping(
    policy: CompiledPolicy, names: set[str], pairs: Sequence[str]
) -> dict[str, str]:
    """Catalog id -> data model: same name (id or upstream_model, any case), then ``--map``."""
    lowered = {n.lower(): n for n in names}
    mapping: dict[str, str] = {}
    for m in policy.models.values():
        hit = lowered.get(m.id.lower()) or lowered.get(m.upstream_model.lower())
        if hit is not None:
            mapping[m.id] = hit
    for pair in pairs:
        data_model, sep, catalog = pair.partition("=")
        if not (sep and data_model and catalog):
            raise ReplayError(f"--map {pair!r}: expected DATA_MODEL=CATALOG_ID")
        if catalog not in policy.models:
            raise ReplayError(f"--map {pair!r}: no catalog model {catalog!r} in the policy")
        if data_model not in names:
            known = ", ".join(sorted(names))
            raise ReplayError(f"--map {pair!r}: no data model {data_model!r} (known: {known})")
        mapping[catalog] = data_model
    return mapping


class DataStats:
    """``LiveStats`` of a warm gateway: circuits closed, mean output tokens from the data."""

    def __init__(self, prompts: Sequence[Prompt], mapping: Mapping[str, str]) -> None:
        self._avg: dict[str, float] = {}
        for catalog, data_model in mapping.items():
            outs = [_output_tokens(p.labels[data_model]) for p in prompts if data_model in p.labels]
            known = [o for o in outs if o is not None]
            if known:
                self._avg[catalog] = sum(known) / len(known)

    def circuit_open(self, model: str) -> bool:
        """Replays assume every upstream is healthy."""
        return False

    def avg_output_tokens(self, route: str, model: str) -> float | None:
        """Mean output tokens of the data model mapped to ``model``."""
        return self._avg.get(model)


def _output_tokens(label: Label) -> int | None:
    if label.output_tokens is not None:
        return label.output_tokens
    return None if label.output_chars is None else estimate_tokens(label.output_chars)


@dataclass(slots=True)
class Tally:
    """Running totals for one strategy."""

    name: str
    model: str | None = None  # set for single-model strategies
    prompts: int = 0
    labeled: int = 0
    score_sum: float = 0.0
    cost_usd: float = 0.0
    p_sum: float = 0.0
    p_count: int = 0
    mix: Counter[str] = field(default_factory=Counter)
    unlabeled: Counter[str] = field(default_factory=Counter)
    no_eligible: Counter[str] = field(default_factory=Counter)

    def add(self, model: str, label: Label | None, cost: float, p: float | None) -> None:
        """Count one prompt served by ``model`` (``label`` None: the data has no score)."""
        self.prompts += 1
        self.mix[model] += 1
        self.cost_usd += cost
        if label is None:
            self.unlabeled[model] += 1
        else:
            self.labeled += 1
            self.score_sum += label.score
        if p is not None:
            self.p_sum += p
            self.p_count += 1

    def summary(self, reference_cost: float) -> dict[str, Any]:
        """The strategy's row of the report; savings are relative to ``reference_cost``."""
        n = self.prompts
        return {
            "strategy": self.name,
            "model": self.model,
            "prompts": n + sum(self.no_eligible.values()),
            "quality": self.score_sum / self.labeled if self.labeled else None,
            "predicted_quality": self.p_sum / self.p_count if self.p_count else None,
            "cost_usd": self.cost_usd,
            "savings_vs_reference": (
                1 - self.cost_usd / reference_cost if reference_cost > 0 else None
            ),
            "labeled": self.labeled,
            "unlabeled": dict(self.unlabeled),
            "no_eligible": dict(self.no_eligible),
            "model_mix": {m: c / n for m, c in self.mix.most_common()} if n else {},
        }


def replay(
    policy: CompiledPolicy,
    prompts: Sequence[Prompt],
    *,
    route: str,
    mapping: Mapping[str, str],
    difficulty: Callable[[Sequence[Any]], float],
    prompt_text: PromptText,
    bars: Sequence[float] = (),
    score: RouteScore | None = None,
    heads: Sequence[str] = (),
) -> dict[str, Any]:
    """Replay ``prompts`` through ``route``; returns the report (see ``main`` for the format).

    Each of ``bars`` adds a ``policy (bar X)`` row: the route with its quality bar (and its
    rules' bars) replaced by X, as an ``x-effgate-quality-bar: X`` header would. ``score``:
    the route's scorer (difficulty and each candidate's P, the row's task as the workflow
    tag), where the estimator has learned heads (``heads``: the catalog ids they cover);
    otherwise ``difficulty`` alone, every P from the IRT formula.
    """
    entry = policy.routes[policy.targets[route].name]
    stats = DataStats(prompts, mapping)
    singles = [entry.reference_model, *(m for m in entry.candidates if m != entry.reference_model)]
    variants: dict[str, float | None] = {"policy": None}
    variants |= {f"policy (bar {b:g})": b for b in bars}
    tallies = {name: Tally(name) for name in variants}
    tallies |= {m: Tally(f"always {m}", model=m) for m in singles}
    for prompt in prompts:
        if score is not None:
            d, p_by_id = score(prompt.messages, prompt.task)
        else:
            d, p_by_id = difficulty(prompt.messages), None
        inp = RouteInput(
            model=entry.name,
            difficulty=d,
            p=p_by_id,
            prompt_text=prompt_text(prompt.messages),
            prompt_tokens=estimate_tokens(prompt.chars),
            task=prompt.task,
        )
        for name, bar in variants.items():
            try:
                decision = decide(policy, replace(inp, quality_bar_override=bar), stats)
            except NoEligibleModel as exc:
                tallies[name].no_eligible[exc.why] += 1
            else:
                chosen = policy.models[decision.model]
                label = _label(prompt, mapping, chosen.id)
                tallies[name].add(
                    chosen.id, label, _cost(policy, chosen, prompt, label, stats), decision.p
                )
        for m in singles:
            model = policy.models[m]
            label = _label(prompt, mapping, m)
            p = p_by_id.get(m) if p_by_id is not None else None
            if p is None and model.skill is not None:
                p = p_acceptable(policy.discrimination, model.skill, d)
            tallies[m].add(m, label, _cost(policy, model, prompt, label, stats), p)
    reference_cost = tallies[entry.reference_model].cost_usd
    return {
        "policy": policy.path,
        "sha256": policy.sha256,
        "route": entry.name,
        "quality_bar": entry.quality_bar,
        "reference_model": entry.reference_model,
        "prompts": len(prompts),
        "mapping": dict(mapping),
        "learned_heads": list(heads),
        "irt_models": [m.id for m in entry.scored if m.id not in heads and m.skill is not None],
        "strategies": [t.summary(reference_cost) for t in tallies.values()],
    }


def _label(prompt: Prompt, mapping: Mapping[str, str], model: str) -> Label | None:
    data_model = mapping.get(model)
    return None if data_model is None else prompt.labels.get(data_model)


def _cost(
    policy: CompiledPolicy, m: ModelEntry, prompt: Prompt, label: Label | None, stats: DataStats
) -> float:
    inp = label.input_tokens if label is not None else None
    if inp is None:
        inp = estimate_tokens(prompt.chars)
    out: float | None = _output_tokens(label) if label is not None else None
    if out is None:
        out = (
            stats.avg_output_tokens("", m.id)
            or m.expected_output_tokens
            or policy.default_expected_output_tokens
        )
    return (inp * m.input_usd_per_mtok + out * m.output_usd_per_mtok) / 1e6


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table."""
    bar = report["quality_bar"]
    lines = [
        f"policy {report['policy']} (sha256 {report['sha256'][:12]}), route {report['route']}"
        f" (quality bar {bar if bar is not None else 'none'}), {report['prompts']} prompts",
        "mapping: " + (", ".join(f"{c}={d}" for c, d in report["mapping"].items()) or "none"),
        "P(acceptable): "
        + (
            f"the artifact's learned heads for {', '.join(report['learned_heads'])}"
            + (
                f"; the IRT formula for {', '.join(report['irt_models'])}"
                if report.get("irt_models")
                else ""
            )
            if report.get("learned_heads")
            else "the IRT formula (difficulty and skills)"
        ),
        f"{'strategy':<28} {'quality':>8} {'predicted':>9} {'cost_usd':>11} {'saved':>8}"
        f" {'unlabeled':>9}  model mix",
    ]
    for s in report["strategies"]:
        name = s["strategy"] + (" (ref)" if s["model"] == report["reference_model"] else "")
        mix = ", ".join(f"{m} {share:.0%}" for m, share in s["model_mix"].items())
        lines.append(
            f"{name:<28} {_num(s['quality']):>8} {_num(s['predicted_quality']):>9}"
            f" {s['cost_usd']:>11.4f} {_pct(s['savings_vs_reference']):>8}"
            f" {sum(s['unlabeled'].values()):>9}  {mix}"
        )
        if s["unlabeled"]:
            lines.append(f"  no label for: {json.dumps(s['unlabeled'])}")
        if s["no_eligible"]:
            lines.append(f"  no eligible model: {json.dumps(s['no_eligible'])}")
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    *,
    estimator_loader: EstimatorLoader = shipped_estimator,
    prompt_text: PromptText = rules_text,
) -> int:
    """Run a replay; prints the table (and writes JSON with ``--json``). Exit status 0 or 1."""
    parser = argparse.ArgumentParser(
        prog="effgate eval", description="Replay a labelled dataset through a routing policy."
    )
    parser.add_argument("--policy", required=True, metavar="FILE")
    parser.add_argument("--data", required=True, action="append", metavar="FILE.jsonl")
    parser.add_argument("--route", metavar="NAME", help="route to replay (default: auto)")
    parser.add_argument(
        "--map", action="extend", nargs="+", default=[], metavar="DATA_MODEL=CATALOG_ID"
    )
    parser.add_argument("--artifact", metavar="DIR", help="estimator artifact (default: shipped)")
    parser.add_argument("--limit", type=int, metavar="N", help="replay the first N prompts")
    parser.add_argument(
        "--quality-bar",
        type=float,
        nargs="+",
        default=[],
        metavar="BAR",
        help="also replay the route with each of these bars (within its min/max_quality_bar)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    args = parser.parse_args(argv)
    try:
        est = estimator_loader(args.artifact)
        policy = load_policy(args.policy, skills=est.skills, discrimination=est.discrimination)
        route = args.route or "auto"
        target = policy.targets.get(route)
        if target is None or target.kind != "route":
            raise ReplayError(f"--route {route!r}: not a route ({', '.join(policy.routes)})")
        bounds = policy.routes[target.name]
        for bar in args.quality_bar:
            if bounds.quality_bar is None:
                raise ReplayError(f"--quality-bar: route {route!r} has no quality bar")
            if not bounds.min_quality_bar <= bar <= bounds.max_quality_bar:
                raise ReplayError(
                    f"--quality-bar {bar:g}: outside route {route!r}'s bounds"
                    f" {bounds.min_quality_bar:g}..{bounds.max_quality_bar:g}"
                    " (its min_quality_bar and max_quality_bar)"
                )
        prompts = read_prompts(args.data, limit=args.limit)
        mapping = resolve_mapping(policy, data_models(prompts), args.map)
    except (PolicyLoadError, DatasetError, ReplayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    score, heads = route_scorer(est, policy.routes[target.name].scored)
    report = replay(
        policy,
        prompts,
        route=route,
        mapping=mapping,
        difficulty=est.difficulty,
        prompt_text=prompt_text,
        bars=args.quality_bar,
        score=score,
        heads=heads,
    )
    print(render(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0
