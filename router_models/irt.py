"""Item response theory: the probability link, and fits of difficulty and skill.

P(model m answers prompt i acceptably) = 1 / (1 + exp(-a * (s_m - d_i))): `irt_p` is the one
place that formula is written. It takes floats (the routing decision, one candidate at a time:
plain `math`, no array is built) or numpy arrays (evaluation and fitting, via `sigmoid`, which
exponentiates only -|z| and so never overflows); both paths compute the same expression.
`policies.engine.p_acceptable` imports it from here: policies may import router_models (never
the reverse), and this module stays light, numpy and `router_models.data` only, both already
loaded wherever a decision is made, so the request path gains no import and no dependency.

The fits: labels may be fractional (cross-entropy against the soft label) and missing (mask).
The fit runs in logit units (theta_m = a*s_m, beta_i = a*d_i) with a Gaussian prior on beta,
alternating exact 1-D Newton steps; `a` is then the spread of beta, so difficulties have unit
variance. Skills can be anchored (held at given values), which keeps a retrained artifact's
scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from router_models.data import LabelMatrix

Array = npt.NDArray[np.float64]
_SCALAR = (float, int)  # a tuple: isinstance on it is twice as fast as on `float | int`


def sigmoid(x: Array) -> Array:
    """1 / (1 + exp(-x)) elementwise, overflow-free: only exp(-|x|) <= 1 is computed."""
    e = np.exp(-np.abs(x))
    out: Array = np.where(x >= 0, 1.0, e) / (1.0 + e)
    return out


@overload
def irt_p(a: float, skill: float, difficulty: float) -> float: ...
@overload
def irt_p(a: Array, skill: float | Array, difficulty: float | Array) -> Array: ...
@overload
def irt_p(a: float, skill: Array, difficulty: float | Array) -> Array: ...
@overload
def irt_p(a: float, skill: float, difficulty: Array) -> Array: ...
def irt_p(a: float | Array, skill: float | Array, difficulty: float | Array) -> float | Array:
    """P(acceptable) = 1 / (1 + exp(-a * (skill - difficulty))); floats in, a float out (math),
    else numpy arrays broadcast together. Never overflows: a huge |z| gives 0.0 or 1.0."""
    if isinstance(a, _SCALAR) and isinstance(skill, _SCALAR) and isinstance(difficulty, _SCALAR):
        # plain floats: an overflowing product is inf, never an error or a warning
        z = float(a) * (float(skill) - float(difficulty))
        e = math.exp(-abs(z))
        return (1.0 if z >= 0 else e) / (1.0 + e)
    with np.errstate(over="ignore"):  # an overflowing a * (skill - difficulty) is +-inf: 1 or 0
        z_arr = np.multiply(a, np.subtract(skill, difficulty), dtype=np.float64)
    return sigmoid(z_arr)


@dataclass(frozen=True, slots=True)
class IRTFit:
    difficulty: Array  # one per prompt, in skill units
    skills: dict[str, float]
    discrimination: float


def fit_irt(
    labels: LabelMatrix,
    *,
    anchors: Mapping[str, float] | None = None,
    anchor_discrimination: float | None = None,
    prior_sd: float = 1.5,
    skill_prior_sd: float = 10.0,
    iterations: int = 200,
    tol: float = 1e-7,
) -> IRTFit:
    """Joint maximum a posteriori fit of difficulties and skills (and a, when free)."""
    y, w = labels.scores, labels.mask.astype(np.float64)
    n, m = y.shape
    anchors = dict(anchors or {})
    fixed = np.array([name in anchors for name in labels.models])
    if fixed.any() and anchor_discrimination is None:
        raise ValueError("anchored skills need the discrimination they were fitted with")
    a_fixed = anchor_discrimination or 1.0
    theta = np.zeros(m)
    for j, name in enumerate(labels.models):
        if name in anchors:
            theta[j] = a_fixed * anchors[name]
        else:
            seen = w[:, j] > 0
            mean = float(y[seen, j].mean()) if seen.any() else 0.5
            mean = min(max(mean, 0.02), 0.98)
            theta[j] = np.log(mean / (1.0 - mean))
    beta = np.zeros(n)
    for _ in range(iterations):
        p = sigmoid(theta[None, :] - beta[:, None])
        info = w * p * (1.0 - p)
        g_beta = (w * (p - y)).sum(axis=1) - beta / prior_sd**2
        h_beta = info.sum(axis=1) + 1.0 / prior_sd**2
        beta += np.clip(g_beta / h_beta, -1.0, 1.0)
        p = sigmoid(theta[None, :] - beta[:, None])
        info = w * p * (1.0 - p)
        g_theta = (w * (y - p)).sum(axis=0) - theta / skill_prior_sd**2
        h_theta = info.sum(axis=0) + 1.0 / skill_prior_sd**2
        step = np.where(fixed, 0.0, np.clip(g_theta / h_theta, -1.0, 1.0))
        theta += step
        if max(float(np.abs(g_beta / h_beta).max(initial=0.0)), float(np.abs(step).max())) < tol:
            break
    spread = float(beta.std()) if n > 1 else 0.0
    a = a_fixed if fixed.any() else (spread if spread > 1e-6 else 1.0)
    skills = {name: float(theta[j] / a) for j, name in enumerate(labels.models)}
    skills.update(anchors)
    return IRTFit(difficulty=beta / a, skills=skills, discrimination=a)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Maps raw predicted difficulty r to calibrated d = scale*r + shift, with refitted skills."""

    scale: float
    shift: float
    skills: dict[str, float]
    discrimination: float


def _newton_logistic(
    x: Array, y: Array, offset: Array, *, ridge: float = 1e-4, iterations: int = 100
) -> Array:
    """Weighted-free logistic regression with soft labels: argmax sum CE(y, sigmoid(off + x b))."""
    b = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = sigmoid(offset + x @ b)
        grad = x.T @ (y - p) - ridge * b
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        b += np.clip(step, -2.0, 2.0)
        if float(np.abs(step).max()) < 1e-9:
            break
    return b


def calibrate(
    raw: Array,
    labels: LabelMatrix,
    *,
    anchors: Mapping[str, float] | None = None,
    anchor_discrimination: float | None = None,
) -> Calibration:
    """Fit P = sigmoid(a*(s_m - (scale*raw + shift))) on held-out predictions `raw`.

    Free: a and every s_m are refitted (scale 1, shift 0). Anchored: a and the anchored
    skills stay; scale, shift and the other skills are fitted.
    """
    rows, cols = np.nonzero(labels.mask)
    y = labels.scores[rows, cols]
    r = raw[rows]
    m = len(labels.models)
    anchors = dict(anchors or {})
    if not anchors:
        x = np.zeros((len(y), m + 1))
        x[np.arange(len(y)), cols] = 1.0
        x[:, m] = -r
        b = _newton_logistic(x, y, np.zeros(len(y)))
        a = float(b[m]) if b[m] > 1e-3 else 1e-3
        skills = {name: float(b[j] / a) for j, name in enumerate(labels.models)}
        return Calibration(scale=1.0, shift=0.0, skills=skills, discrimination=a)
    if anchor_discrimination is None:
        raise ValueError("anchored calibration needs the base discrimination")
    a = anchor_discrimination
    known = np.array([name in anchors for name in labels.models])
    free = [j for j in range(m) if not known[j]]
    offset = np.array([a * anchors.get(name, 0.0) for name in labels.models])[cols]
    x = np.zeros((len(y), len(free) + 2))
    for k, j in enumerate(free):
        x[cols == j, k] = 1.0
    x[:, len(free)] = known[cols].astype(np.float64)  # -a*shift, on anchored models
    x[:, len(free) + 1] = -r  # a*scale
    b = _newton_logistic(x, y, offset)
    scale = max(float(b[len(free) + 1]) / a, 1e-3)
    shift = -float(b[len(free)]) / a
    skills = dict(anchors)
    for k, j in enumerate(free):
        # theta_j = a*(s_j - shift) for unanchored models, which carry their own intercept
        skills[labels.models[j]] = float(b[k]) / a + shift
    return Calibration(scale=scale, shift=shift, skills=skills, discrimination=a)
