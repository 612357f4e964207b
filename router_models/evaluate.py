"""`effgate eval --data F.jsonl [--artifact DIR] [--strong M --weak N] [--json OUT] [--plot P]`.

Replays a labelled file through the estimator and two baselines (prompt length, random):
RouteLLM's strong/weak metrics (APGR, CPT(50%), CPT(80%)) and a many-model cost-quality
curve with RouterBench's AIQ (see router_models.metrics and router_models.routing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router_models import routing
from router_models.artifact import ArtifactError, load_estimator
from router_models.data import DataError, LabelMatrix, Price, Row, label_matrix, load_dataset
from router_models.fit import MissingExtra
from router_models.irt import fit_irt

F64 = npt.NDArray[np.float64]


def _pair_block(score: F64, ys: F64, yw: F64) -> dict[str, float]:
    res = routing.pair_result(score, ys, yw)
    return {"apgr": round(res.apgr, 4), "cpt50": round(res.cpt50, 4), "cpt80": round(res.cpt80, 4)}


def _pair_routers(
    sub: LabelMatrix, strong: str, weak: str, scores: Mapping[str, F64], a: float, oracle_a: float
) -> dict[str, dict[str, float]]:
    """APGR/CPT of each router on the rows where both models are scored (`sub`)."""
    ys = sub.scores[:, sub.models.index(strong)]
    yw = sub.scores[:, sub.models.index(weak)]
    out = {}
    for name, score in scores.items():
        out[name] = _pair_block(score, ys, yw)
        if name in GAIN_OF:
            sa = oracle_a if name.startswith("oracle") else a
            gain = routing.gain_score(routing.standardise(score), sa, sub, strong, weak)
            out[GAIN_OF[name]] = _pair_block(gain, ys, yw)
    return out


# routers whose IRT gain P(strong ok) - P(weak ok) is reported beside their raw score
GAIN_OF = {"estimator": "estimator_gain", "length": "length_irt", "oracle_irt": "oracle_irt_gain"}


def evaluate_rows(
    rows: Sequence[Row],
    difficulty: F64,
    discrimination: float,
    prices: Mapping[str, Price],
    *,
    strong: str | None = None,
    weak: str | None = None,
    seed: int = 0,
    learned: Mapping[str, F64] | None = None,
) -> dict[str, Any]:
    """Both evaluations for one set of rows; `difficulty` is the estimator's, per row.
    ``learned``: P per row of each model the artifact has learned heads for; where both
    models of a pair (or every model of the many-model table) have one, the learned router
    (P(strong) - P(weak); the cheapest model with P >= bar) is reported beside the rest."""
    labels = label_matrix(rows)
    a = discrimination
    length = np.log1p(np.array([r.prompt_chars for r in rows], dtype=np.float64))
    rand = np.random.default_rng(seed).random(len(rows))
    # the ceiling of one scalar difficulty: IRT fitted on this file's own labels
    oracle = fit_irt(labels)
    raw = {
        "estimator": difficulty,
        "length": length,
        "random": rand,
        "oracle_irt": oracle.difficulty,
    }
    report: dict[str, Any] = {"rows": len(rows), "discrimination": round(a, 4)}
    if strong is None or weak is None:
        strong, weak = routing.default_pair(labels, prices)
        rule = (
            f"strong = best mean among models scored on >= {routing.MIN_COVERAGE:.0%} of rows "
            f"(>= {routing.FALLBACK_COVERAGE:.0%} where fewer than two reach that); "
            f"weak = cheapest priced model >= {routing.PAIR_GAP} below it"
        )
    else:
        rule = "given"
    for m in (strong, weak):
        if m not in labels.models:
            raise DataError(f"model {m!r} is not scored in this file")
    sel = routing.both_scored(labels, strong, weak)
    if sel.sum() < routing.MIN_PAIR_ROWS:
        raise DataError(f"only {int(sel.sum())} rows score both {strong!r} and {weak!r}")

    def on(rows_sel: npt.NDArray[np.bool_], s: str, w: str) -> tuple[LabelMatrix, dict[str, F64]]:
        sub = LabelMatrix(labels.models, labels.scores[rows_sel], labels.mask[rows_sel])
        scores = {k: v[rows_sel] for k, v in raw.items()}
        if learned is not None and s in learned and w in learned:
            scores["learned"] = learned[s][rows_sel] - learned[w][rows_sel]
        return sub, scores

    sub, scores = on(sel, strong, weak)
    report["pair"] = {
        "strong": strong,
        "weak": weak,
        "rows": int(sel.sum()),
        "strong_mean": round(float(sub.scores[:, sub.models.index(strong)].mean()), 4),
        "weak_mean": round(float(sub.scores[:, sub.models.index(weak)].mean()), 4),
        "choice": rule,
        "score": "estimator: raw difficulty; *_gain / length_irt: P(strong ok) - P(weak ok); "
        "length: log chars; oracle_irt: IRT difficulty fitted on this file's labels; "
        "learned: P(strong ok) - P(weak ok) from the artifact's learned heads",
        "routers": _pair_routers(sub, strong, weak, scores, a, oracle.discrimination),
    }
    table = []
    for other in routing.pair_candidates(labels, strong, prices):
        sub, scores = on(routing.both_scored(labels, strong, other), strong, other)
        res = _pair_routers(sub, strong, other, scores, a, oracle.discrimination)
        table.append(
            {
                "weak": other,
                "weak_mean": round(float(sub.scores[:, sub.models.index(other)].mean()), 4),
                "strong_mean": round(float(sub.scores[:, sub.models.index(strong)].mean()), 4),
                **{k: v["apgr"] for k, v in res.items()},
            }
        )
    report["pair_table"] = table
    routers = {
        "estimator": (difficulty, a),
        "length": (routing.standardise(length), a),
        "random": (routing.standardise(rand), a),
        # the ceiling of one scalar difficulty, at the discrimination it was fitted with
        "oracle_irt": (oracle.difficulty, oracle.discrimination),
    }
    report["multi"] = _multi_block(rows, labels, prices, routers, learned)
    return report


def _multi_block(
    rows: Sequence[Row],
    labels: Any,
    prices: Mapping[str, Price],
    routers: Mapping[str, tuple[F64, float]],
    learned: Mapping[str, F64] | None = None,
) -> dict[str, Any]:
    table = routing.cost_table(rows, labels, prices)
    block: dict[str, Any] = {
        "models": list(table.models),
        "left_out": list(table.left_out),
        "rows_used": int(table.used.sum()),
    }
    if len(table.models) < 2 or table.used.sum() < 2:
        block["note"] = "fewer than two priced models scored on the same rows"
        return block
    mc, mq = table.cost.mean(axis=0), table.score.mean(axis=0)
    singles = [
        {"model": m, "cost": float(mc[j]), "quality": round(float(mq[j]), 4)}
        for j, m in enumerate(table.models)
    ]
    best = int(np.argmax(mq))
    top = table.score.max(axis=1, keepdims=True)
    oracle_cost = np.where(table.score >= top, table.cost, np.inf).min(axis=1)
    block.update(
        singles=singles,
        best_single=singles[best],
        oracle={"cost": float(oracle_cost.mean()), "quality": round(float(top.mean()), 4)},
        routers={},
    )
    results = {name: routing.multi_result(d, a, table) for name, (d, a) in routers.items()}
    if learned is not None and all(m in learned for m in table.models):
        p = np.column_stack([learned[m][table.used] for m in table.models])
        results["learned"] = routing.multi_result_p(p, table)
    for name, res in results.items():
        match = res.cost_to_match_best
        block["routers"][name] = {
            "aiq": round(res.aiq, 4),
            "cost_to_match_best": match,
            "cost_share_of_best": None if match is None else round(match / float(mc[best]), 4),
            "curve": [
                {"bar": c.bar, "cost": c.cost, "quality": round(c.quality, 4)} for c in res.curve
            ],
        }
    return block


def learned_p(est: Any, rows: Sequence[Row], d: F64) -> dict[str, F64] | None:
    """P per row of every model the estimator has learned heads for (each row's task as
    its workflow tag, as `effgate eval --policy` passes it); None without heads."""
    heads = est.heads
    if heads is None:
        return None
    from router_models.signature import signature

    sigs = [signature(list(r.messages), digest=False) for r in rows]
    p = heads.p_many(sigs, d, [str(r.task) for r in rows])
    return {m: p[:, j] for j, m in enumerate(heads.models)}


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"rows: {report['rows']}  discrimination a = {report['discrimination']}"]
    pair = report["pair"]
    lines.append(
        f"strong/weak: {pair['strong']} ({pair['strong_mean']}) vs {pair['weak']} "
        f"({pair['weak_mean']}); {pair['choice']}"
    )
    lines.append(f"  {'router':<22}{'APGR':>8}{'CPT50':>8}{'CPT80':>8}")
    for name, r in pair["routers"].items():
        lines.append(f"  {name:<22}{r['apgr']:>8.3f}{r['cpt50']:>8.3f}{r['cpt80']:>8.3f}")
    table = report.get("pair_table", [])
    if table:
        cols: tuple[str, ...] = (
            "estimator", "estimator_gain", "length", "random", "oracle_irt", "oracle_irt_gain"
        )  # fmt: skip
        cols += ("learned",) if all("learned" in t for t in table) else ()
        lines.append(f"pair table (APGR), strong = {pair['strong']}:")
        lines.append(f"  {'weak (mean)':<40}" + "".join(f"{c[:14]:>15}" for c in cols))
        for t in table:
            name = f"{t['weak']} ({t['weak_mean']})"
            lines.append(f"  {name:<40}" + "".join(f"{t[c]:>15.3f}" for c in cols))
    multi = report["multi"]
    if "routers" in multi:
        best, oracle = multi["best_single"], multi["oracle"]
        lines.append(
            f"many models ({len(multi['models'])} priced, {multi['rows_used']} rows; left out "
            f"(no price, or scored on too few rows: < {routing.MIN_COVERAGE:.0%}, or "
            f"< {routing.FALLBACK_COVERAGE:.0%} where fewer than two priced models reach that, "
            f"or left out until the rest share {routing.FALLBACK_COVERAGE:.0%} of rows, or "
            "as many rows as they can): "
            f"{', '.join(multi['left_out']) or 'none'})"
        )
        lines.append(
            f"  best single {best['model']}: quality {best['quality']}, ${best['cost']:.3g}/prompt;"
            f" oracle: quality {oracle['quality']}, ${oracle['cost']:.3g}/prompt"
        )
        for name, r in multi["routers"].items():
            share = r["cost_share_of_best"]
            match = "not reached" if share is None else f"{100 * share:.1f}% of its cost"
            lines.append(f"  {name:<22}AIQ {r['aiq']:.4f}  match best single: {match}")
    else:
        lines.append(f"many models: {multi.get('note', '')}")
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; MissingExtra without `effgate[report]`."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingExtra("--plot needs matplotlib: pip install 'effgate[report]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: Mapping[str, Any], out: Path) -> None:
    plt = pyplot()
    multi = report["multi"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, r in multi.get("routers", {}).items():
        ax.plot(
            [c["cost"] for c in r["curve"]],
            [c["quality"] for c in r["curve"]],
            marker=".",
            label=f"{name} (AIQ {r['aiq']:.3f})",
        )
    for s in multi.get("singles", []):
        ax.scatter([s["cost"]], [s["quality"]], color="black", s=14)
        ax.annotate(s["model"], (s["cost"], s["quality"]), fontsize=6)
    if "oracle" in multi:
        ax.scatter(
            [multi["oracle"]["cost"]],
            [multi["oracle"]["quality"]],
            marker="*",
            s=80,
            color="red",
            label="oracle",
        )
    ax.set_xlabel("mean cost per prompt (USD)")
    ax.set_ylabel("mean quality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="effgate eval", description=__doc__)
    p.add_argument("--data", action="append", required=True, type=Path)
    p.add_argument("--artifact", type=Path, default=None)
    p.add_argument("--strong")
    p.add_argument("--weak")
    p.add_argument(
        "--held-out",
        action="store_true",
        help="only rows the artifact held out from training (in-distribution check)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random router")
    p.add_argument("--json", type=Path, dest="json_out")
    p.add_argument("--plot", type=Path)
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if (args.strong is None) != (args.weak is None):
        print("effgate eval: give both --strong and --weak, or neither", file=sys.stderr)
        return 2
    if args.plot:  # checked before the work, not after it
        try:
            pyplot()
        except MissingExtra as exc:
            print(f"effgate eval: {exc}", file=sys.stderr)
            return 2
    try:
        est = load_estimator(args.artifact)
        data = load_dataset(args.data)
        rows = list(data.rows)
        if args.held_out:
            held = set(est.metadata.get("held_out_ids", []))
            rows = [r for r in rows if r.id in held]
        if len(rows) < 10:
            raise DataError(f"only {len(rows)} rows to evaluate")
        d = est.difficulties([r.messages for r in rows])
        report = evaluate_rows(
            rows,
            d,
            est.discrimination,
            data.prices,
            strong=args.strong,
            weak=args.weak,
            seed=args.seed,
            learned=learned_p(est, rows, d),
        )
    except (ArtifactError, DataError, OSError, ValueError) as exc:
        print(f"effgate eval: {exc}", file=sys.stderr)
        return 1
    report = {
        "data": [str(p) for p in args.data],
        "artifact": str(args.artifact or "default"),
        "held_out_only": bool(args.held_out),
        **report,
    }
    print(format_report(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot_report(report, args.plot)
    return 0
