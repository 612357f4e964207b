"""The learner's design: the kernel's top eigenpairs without forming the kernel."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from router_models.design import _top_eigenpairs
from router_models.learner import LearnerParams


def test_top_eigenpairs_without_the_kernel_match_the_dense_kernel() -> None:
    rng = np.random.default_rng(5)
    # a few strong directions plus noise, as n-gram matrices have
    x = sp.random(400, 900, density=0.02, random_state=6, format="csr")
    x = (x + sp.csr_matrix(rng.normal(size=(400, 3)) @ rng.normal(size=(3, 900)) * 0.3)).tocsr()
    vals, vecs = _top_eigenpairs(x, 20, LearnerParams().rsvd_iter)
    kern = (x @ x.T).toarray()
    full_vals, full_vecs = scipy.linalg.eigh(kern, subset_by_index=(380, 399))
    assert np.all(np.diff(vals) >= 0)  # ascending, as eigh gives them
    # the three planted directions exactly, values and directions (up to sign)
    assert np.allclose(vals[-3:], full_vals[-3:], rtol=1e-8)
    cos = np.abs((vecs[:, -3:] * full_vecs[:, -3:]).sum(axis=0))
    assert cos.min() > 0.999
    # the noise floor to within the default's two power iterations: what the fit needs is a
    # basis that holds nearly all of the top 20 directions' weight, not each of them exactly
    assert np.allclose(vals, full_vals, rtol=0.1)
    # (0.99987 of it with 2 iterations; 0.99974 with 1, 0.99933 with none)
    assert np.trace(vecs.T @ kern @ vecs) > 0.9998 * full_vals.sum()


def test_top_eigenpairs_with_fewer_buckets_than_the_rank() -> None:
    x = sp.csr_matrix(np.random.default_rng(7).normal(size=(40, 5)))
    vals, vecs = _top_eigenpairs(x, 200, LearnerParams().rsvd_iter)
    full = scipy.linalg.eigh((x @ x.T).toarray(), eigvals_only=True)
    assert vals.shape == (5,) and vecs.shape == (40, 5)
    assert np.allclose(vals, full[-5:], rtol=1e-8)  # every direction there is, none lost
    empty_vals, empty_vecs = _top_eigenpairs(sp.csr_matrix((40, 0)), 200, 2)
    assert np.all(empty_vals == 0) and empty_vecs.shape[0] == 40
