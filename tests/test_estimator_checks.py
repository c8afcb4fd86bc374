"""scikit-learn's estimator checks on every estimator the packages define, found by walking them, so that a new one
cannot skip them."""

import importlib
import inspect
import pkgutil

from sklearn.base import BaseEstimator
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify.coupling import CoupledSVC
from classify.heads import LayerSelector
from classify.linear_svm import LBFGSLinearSVC
from classify.pairwise_svm import PairwiseSVC
from extract.frozen_features import FrozenFeatures

ESTIMATORS = [LayerSelector(), PairwiseSVC(), CoupledSVC(SVC(), cv=2), LBFGSLinearSVC(),
              FrozenFeatures(image_size=32, device="cpu")]

# FrozenFeatures takes images, and its tags say so (string input, no 2-D array): scikit-learn's checks then skip it
# with a warning, as they skip its own text transformers. What applies (clone, get/set_params, pickling,
# NotFittedError before fit) is tested in tests/test_frozen_features.py.


def defined_estimators() -> set[type]:
    """Every BaseEstimator subclass defined in extract, classify and pipelines."""
    found = set()
    for package in ("extract", "classify", "pipelines"):
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if module.name.endswith("__main__"):
                continue
            loaded = importlib.import_module(module.name)
            found |= {cls for _, cls in inspect.getmembers(loaded, inspect.isclass)
                      if issubclass(cls, BaseEstimator) and cls.__module__ == module.name}
    return found


def test_every_estimator_of_ours_is_checked():
    assert defined_estimators() == {type(estimator) for estimator in ESTIMATORS}


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
