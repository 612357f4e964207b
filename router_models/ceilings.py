"""`python -m router_models ceilings --data F.jsonl`: how well could any router score do here?

Strong/weak APGR (RouteLLM's method, as `eval` computes it) of scores built from the
evaluated file's *own labels*, beside length and random. They bound what a prompt-only
estimator could reach on that file:

- `1pl d` / `1pl gain`: the file's IRT difficulty, raw or as P(strong) - P(weak);
- `2pl gain`: a per-item discrimination as well, P = sigmoid(alpha_i * (s_m - d_i));
- `slope`: per item, the least-squares slope of the labels on the models' skills;
- `2pl gain, pair left out`: the 2PL items fitted on every model *except* the routed pair,
  whose skills then come from their mean scores only (as a router would take them). It is
  still far more than a prompt-only score sees (the other models' labels on this prompt),
  and it is the fairest of these ceilings.

Printed per pair: the default pair and every pair of the pair table, then their mean.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router_models import routing
from router_models.data import DataError, LabelMatrix, label_matrix, load_dataset
from router_models.irt import fit_irt, irt_p, sigmoid

F64 = npt.NDArray[np.float64]


def fit_2pl(
    labels: LabelMatrix, *, iterations: int = 150, prior_sd: float = 1.5, log_alpha_sd: float = 0.5
) -> tuple[F64, F64, dict[str, float]]:
    """MAP 2PL fit in logit units, started from the 1PL fit: per-item alpha (log-normal
    prior around 1) and beta (normal prior), per-model theta; clipped alternating Newton
    steps. Returns (alpha, beta, theta by model); P = sigmoid(alpha * (theta - beta))."""
    one = fit_irt(labels)
    y, w = labels.scores, labels.mask.astype(np.float64)
    theta = np.array([one.skills[m] for m in labels.models]) * one.discrimination
    beta = one.difficulty * one.discrimination
    log_alpha = np.zeros(beta.shape[0])
    for _ in range(iterations):
        alpha = np.exp(log_alpha)
        x = theta[None, :] - beta[:, None]
        p = sigmoid(alpha[:, None] * x)
        r = w * (y - p)
        g = -(alpha[:, None] * r).sum(1) - beta / prior_sd**2
        h = (alpha[:, None] ** 2 * w * p * (1 - p)).sum(1) + 1 / prior_sd**2
        beta += np.clip(g / h, -1.0, 1.0)
        x = theta[None, :] - beta[:, None]
        p = sigmoid(alpha[:, None] * x)
        r = w * (y - p)
        g = (r * x).sum(1) * alpha - log_alpha / log_alpha_sd**2
        h = (w * p * (1 - p) * x**2).sum(1) * alpha**2 + 1 / log_alpha_sd**2
        log_alpha += np.clip(g / h, -0.5, 0.5)
        alpha = np.exp(log_alpha)
        p = irt_p(alpha[:, None], theta[None, :], beta[:, None])
        g = (w * (y - p) * alpha[:, None]).sum(0) - theta / 100.0
        h = (w * p * (1 - p) * alpha[:, None] ** 2).sum(0) + 1 / 100.0
        theta += np.clip(g / h, -1.0, 1.0)
    return np.exp(log_alpha), beta, dict(zip(labels.models, theta.tolist(), strict=True))


def skill_slopes(labels: LabelMatrix, skills: dict[str, float]) -> F64:
    """Per item: least-squares slope of the scored models' labels on their skills."""
    s = np.array([skills[m] for m in labels.models])
    w = labels.mask.astype(np.float64)
    n = np.maximum(w.sum(1), 1.0)
    s_mean = (w * s).sum(1) / n
    y_mean = (w * labels.scores).sum(1) / n
    xc = w * (s[None, :] - s_mean[:, None])
    cov = (xc * (labels.scores - y_mean[:, None])).sum(1)
    var = (xc**2).sum(1)
    out: F64 = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    return out


def pair_left_out_gain(labels: LabelMatrix, strong: str, weak: str) -> F64:
    """2PL gain with the items fitted without the pair, the pair's skills from their means."""
    keep = [j for j, m in enumerate(labels.models) if m not in (strong, weak)]
    others = LabelMatrix(
        tuple(labels.models[j] for j in keep), labels.scores[:, keep], labels.mask[:, keep]
    )
    alpha, beta, _ = fit_2pl(others)
    out = []
    for m in (strong, weak):
        j = labels.models.index(m)
        mean = float(labels.scores[labels.mask[:, j], j].mean())
        out.append(irt_p(alpha, routing.skill_from_mean(beta, alpha, mean), beta))
    gain: F64 = out[0] - out[1]
    return gain


PairScore = Callable[[str, str], F64]


def pair_apgr(labels: LabelMatrix, strong: str, weak: str, score: F64) -> float:
    sel, _, ys, yw = routing.pair_rows(labels, strong, weak)
    return routing.pair_result(score[sel], ys, yw).apgr


def ceilings(
    labels: LabelMatrix, pairs: list[tuple[str, str]], lengths: F64, seed: int = 0
) -> dict[str, list[float]]:
    """APGR per pair (in `pairs` order) for every score named in the module docstring."""
    one = fit_irt(labels)
    alpha, beta, theta = fit_2pl(labels)

    def irt_gain(strong: str, weak: str) -> F64:
        a, d = one.discrimination, one.difficulty
        g: F64 = irt_p(a, one.skills[strong], d) - irt_p(a, one.skills[weak], d)
        return g

    def two_pl_gain(strong: str, weak: str) -> F64:
        g: F64 = irt_p(alpha, theta[strong], beta) - irt_p(alpha, theta[weak], beta)
        return g

    rand: F64 = np.asarray(np.random.default_rng(seed).random(lengths.shape[0]), dtype=np.float64)
    slope = skill_slopes(labels, one.skills)
    scores: dict[str, PairScore] = {
        "random": lambda s, w: rand,
        "length": lambda s, w: lengths,
        "1pl d": lambda s, w: one.difficulty,
        "1pl gain": irt_gain,
        "2pl gain": two_pl_gain,
        "slope": lambda s, w: slope,
        "2pl gain, pair left out": lambda s, w: pair_left_out_gain(labels, s, w),
    }
    return {
        name: [pair_apgr(labels, s, w, f(s, w)) for s, w in pairs] for name, f in scores.items()
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m router_models ceilings", description=__doc__)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        data = load_dataset([args.data])
    except (DataError, OSError) as exc:
        print(f"ceilings: {exc}", file=sys.stderr)
        return 1
    rows = list(data.rows)
    labels = label_matrix(rows)
    strong, weak = routing.default_pair(labels, data.prices)
    pairs = [(strong, weak)] + [
        (strong, w) for w in routing.pair_candidates(labels, strong, data.prices) if w != weak
    ]
    lengths = np.log1p(np.array([r.prompt_chars for r in rows], dtype=np.float64))
    table = ceilings(labels, pairs, lengths, args.seed)
    print(f"{args.data.name}: {len(rows)} rows; strong {strong}; APGR per weak model")
    weak_names = [w for _, w in pairs]
    width = max(len(n) for n in table) + 2
    print(f"  {'score':<{width}}{'mean':>7}  " + "  ".join(w[:14] for w in weak_names))
    for name, values in table.items():
        cells = "  ".join(
            f"{v:>{min(len(w), 14)}.3f}" for v, w in zip(values, weak_names, strict=True)
        )
        print(f"  {name:<{width}}{np.mean(values):>7.3f}  {cells}", flush=True)
    print("  (first column after the mean: the default pair)")
    return 0
