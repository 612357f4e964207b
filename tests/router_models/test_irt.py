"""The one IRT link, ``irt_p``: scalar (math) and array (numpy) paths agree and never overflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.engine import p_acceptable
from router_models.irt import irt_p, sigmoid

# up to 1e300 and discriminations up to 1e10: z = a * (skill - difficulty) reaches +-inf
HUGE = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False)
A = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)


def test_the_formula():
    assert irt_p(1.5, 1.0, 0.2) == pytest.approx(1 / (1 + math.exp(-1.5 * 0.8)))
    assert irt_p(1.0, -1.0, 0.5) == pytest.approx(1 / (1 + math.exp(1.5)))
    assert irt_p(2.0, 0.3, 0.3) == 0.5
    assert irt_p(1, 0, 1) == pytest.approx(1 / (1 + math.e))  # ints are floats here
    assert isinstance(irt_p(1.0, 0.0, np.float64(1.0)), float)
    assert p_acceptable is irt_p  # the engine's name for the same function


def test_arrays_broadcast():
    d = np.array([-1.0, 0.0, 2.0])
    skills = np.array([0.0, 1.0])
    p = irt_p(1.3, skills[None, :], d[:, None])
    assert p.shape == (3, 2)
    want = [1 / (1 + math.exp(-1.3 * (s - x))) for x in d for s in skills]
    assert p.ravel().tolist() == pytest.approx(want, rel=1e-12)
    per_item = irt_p(np.array([0.5, 1.0, 2.0]), 1.0, d)
    want = [irt_p(a, 1.0, float(x)) for a, x in zip([0.5, 1.0, 2.0], d, strict=True)]
    assert per_item.tolist() == pytest.approx(want, rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(a=A, skill=HUGE, difficulty=HUGE)
def test_scalar_and_vector_paths_agree_and_never_overflow(a, skill, difficulty):
    # pytest turns numpy's overflow RuntimeWarning into an error; math.exp would raise
    scalar = irt_p(a, skill, difficulty)
    vector = irt_p(np.array([a]), np.array([skill]), np.array([difficulty]))
    assert isinstance(scalar, float) and 0.0 <= scalar <= 1.0
    assert vector.shape == (1,) and 0.0 <= vector[0] <= 1.0
    assert math.isclose(scalar, float(vector[0]), rel_tol=1e-12, abs_tol=1e-300)
    z = a * (skill - difficulty)
    if z > 40:
        assert scalar == 1.0
    elif z < -750:
        assert scalar == 0.0


@given(st.floats(allow_nan=False))
def test_sigmoid_is_symmetric_and_finite(x):
    p = sigmoid(np.array([x, -x]))
    assert np.isfinite(p).all() and 0.0 <= p.min() <= p.max() <= 1.0
    assert p[0] + p[1] == pytest.approx(1.0)
