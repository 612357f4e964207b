"""The learner on a labelled file, for the learning curve (`benchmarks.learning_curve`):
the examples it fits on in each label regime, its fit over the shipped prior, its P on
held-out rows, and the P of the prior it starts from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.labelled_files import FileData, bandit_labels

F64 = npt.NDArray[np.float64]


def _prior_on(fd: FileData, idx: npt.NDArray[np.intp]) -> Callable[[str], F64 | None]:
    """The prior's logit of a model on the rows ``idx`` (None for a model it does not know)."""
    return lambda m: fd.prior_logit(m, idx)


def training_examples(
    fd: FileData, train: npt.NDArray[np.intp], regime: str, seed: int
) -> list[Any]:
    """The examples the learner fits on: every label of the drawn rows (full), or the one
    label per row of the bandit regime (`labelled_files.bandit_labels`)."""
    from router_models.learner import Example

    if regime != "bandit":
        return [fd.examples[int(i)] for i in train]
    labs = bandit_labels(fd, train, np.random.default_rng(1000 + seed))
    return [
        Example(fd.examples[int(i)].sig, lab, fd.examples[int(i)].group, fd.examples[int(i)].tag)
        for i, lab in zip(train, labs, strict=True)
    ]


def fit_learner(
    fd: FileData, train: npt.NDArray[np.intp], exs: Sequence[Any], seed: int, params: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(heads fitted on ``exs``, the examples of the drawn rows ``train``; what the fit chose:
    rank and lam_model (selected with select=1), the share of the heads' departure from the
    prior kept (beta), the calibration stage's candidate, the neighbour count;
    `router_models.learner.fit_heads_reported`)."""
    from router_models.learner import LearnerParams, fit_heads_reported

    params = params or LearnerParams()
    return fit_heads_reported(exs, fd.d[train], _prior_on(fd, train), params, seed=seed)


def prior_p(
    fd: FileData, train: npt.NDArray[np.intp], exs: Sequence[Any], idx: npt.NDArray[np.intp]
) -> F64:
    """(len(idx), models) P of the prior the learner starts from (`design.prior_offsets`
    on the training labels): the IRT P of a model the prior knows, and for one it does not,
    the fallback fitted on its training labels; NaN for a model without training labels
    that the prior does not know."""
    from router_models.design import example_labels, prior_offsets
    from router_models.irt import sigmoid

    models, y, mask = example_labels(exs)
    c, g = prior_offsets(models, y, mask, fd.d[train], _prior_on(fd, train))
    at = {m: j for j, m in enumerate(models)}
    out = np.full((idx.size, len(fd.labels.models)), np.nan)
    for j, m in enumerate(fd.labels.models):
        if m in at:
            out[:, j] = sigmoid(c[at[m]] + g[at[m]] * fd.d[idx])
        elif (lg := fd.prior_logit(m, idx)) is not None:
            out[:, j] = sigmoid(lg)
    return out


def learner_p(fd: FileData, heads: Any, idx: npt.NDArray[np.intp], models: Sequence[str]) -> F64:
    """(len(idx), len(models)) P from the heads; the prior's P for models they lack."""
    from router_models.irt import sigmoid

    out = np.zeros((idx.size, len(models)))
    cols = [heads.index(m) for m in models]
    have = np.array([c for c in cols if c is not None], dtype=np.intp)
    where = [j for j, c in enumerate(cols) if c is not None]
    for r, i in enumerate(idx):
        ex = fd.examples[int(i)]
        out[r, where] = heads.p(ex.sig, float(fd.d[int(i)]), have, ex.tag)
    for j, c in enumerate(cols):
        if c is None:
            lg = fd.prior_logit(models[j], idx)
            out[:, j] = sigmoid(lg) if lg is not None else 0.5
    return out
