"""CoupledSVC: an RBF SVM's probabilities as libsvm computes them (pairwise Platt sigmoids, then coupling)."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.svm import SVC

from classify.coupling import CoupledSVC, couple
from classify.pairwise_svm import PairwiseSVC, class_pairs


def test_coupling_recovers_the_distribution_that_consistent_pairwise_probabilities_come_from():
    rng = np.random.default_rng(0)
    truth = rng.dirichlet(np.ones(5), size=20)
    pairwise = np.stack([truth[:, a] / (truth[:, a] + truth[:, b]) for a, b in class_pairs(5)], axis=1)
    np.testing.assert_allclose(couple(pairwise, 5), truth, atol=1e-6)


@pytest.fixture(scope="module")
def digits():
    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    return features[:900], labels[:900], features[900:], labels[900:]


def confidence_quality(model, x_test, y_test) -> tuple[float, float]:
    """Log loss, and how well the probability of the predicted class tells right predictions from wrong (AUROC)."""
    probabilities = model.predict_proba(x_test)
    predicted = probabilities.argmax(axis=1)
    return log_loss(y_test, probabilities), roc_auc_score(predicted == y_test, probabilities.max(axis=1))


@pytest.mark.parametrize("svm", [PairwiseSVC(C=1), SVC(C=1)], ids=["PairwiseSVC", "SVC"])
def test_probabilities_are_as_good_as_libsvms_own_and_agree_with_the_predictions(digits, svm):
    x_train, y_train, x_test, y_test = digits
    model = CoupledSVC(svm, cv=3).fit(x_train, y_train)
    probabilities = model.predict_proba(x_test)
    assert np.allclose(probabilities.sum(axis=1), 1) and probabilities.min() >= 0
    assert np.array_equal(model.predict(x_test), model.classes_[probabilities.argmax(axis=1)])
    assert np.mean(model.predict(x_test) == model.estimator_.predict(x_test)) > 0.97  # the vote, where it is clear
    if "probability" not in SVC().get_params():
        pytest.skip("this scikit-learn has no SVC(probability=True) to compare with (deprecated in 1.9)")
    libsvm = SVC(C=1, probability=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        libsvm.fit(x_train, y_train)
    ours, reference = confidence_quality(model, x_test, y_test), confidence_quality(libsvm, x_test, y_test)
    assert ours[0] < 1.25 * reference[0] and ours[1] > reference[1] - 0.05, (ours, reference)


def test_two_classes_and_labels_of_any_type(digits):
    x_train, y_train, x_test, y_test = digits
    names = np.array(["even", "odd"])
    model = CoupledSVC(PairwiseSVC(), cv=3).fit(x_train, names[y_train % 2])
    probabilities = model.predict_proba(x_test)
    assert probabilities.shape == (len(x_test), 2) and list(model.classes_) == ["even", "odd"]
    assert np.mean(model.predict(x_test) == names[y_test % 2]) > 0.9
    # the second column is P(odd): it rises with the SVM's decision value, positive for classes_[1]
    order = np.argsort(model.estimator_.decision_function(x_test))
    assert probabilities[order[-1], 1] > 0.9 > 0.1 > probabilities[order[0], 1]


def test_a_weighted_svm_keeps_its_weighting_in_its_probabilities():
    """Sigmoids fitted without the SVM's class weights learn the train counts back: on a test split of equal classes
    the most probable class would again pass the rare class over (balanced accuracy 0.51 against the vote's 0.62)."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    y_train, y_test = np.repeat(np.arange(3), [300, 100, 15]), np.repeat(np.arange(3), 300)
    x_train, x_test = (centres[y] + rng.normal(size=(len(y), 2)) for y in (y_train, y_test))
    vote = SVC(C=1, class_weight="balanced").fit(x_train, y_train).predict(x_test)
    coupled = CoupledSVC(SVC(C=1, class_weight="balanced"), cv=3).fit(x_train, y_train).predict(x_test)
    assert balanced_accuracy_score(y_test, coupled) >= balanced_accuracy_score(y_test, vote) - 0.03
    unweighted = CoupledSVC(SVC(C=1), cv=3).fit(x_train, y_train).predict(x_test)
    assert balanced_accuracy_score(y_test, coupled) > balanced_accuracy_score(y_test, unweighted) + 0.05
