"""How hard a request is: the difficulty estimator, its features, training and evaluation.

Run time needs numpy only: `load_estimator()` reads a plain-data artifact (JSON + .npz)
and `Estimator.difficulty(messages)` scores one chat request in well under a millisecond.
Training (`router_models.train`) and offline evaluation (`router_models.evaluate`) import
scikit-learn, scipy and matplotlib lazily, inside their own modules.
"""

from __future__ import annotations

from router_models.artifact import ArtifactError, load_estimator
from router_models.estimator import Estimator

__all__ = ["ArtifactError", "Estimator", "load_estimator"]
