"""PairwiseSVC is scikit-learn's RBF SVC, fitted differently: same predictions, decision values and layout."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from classify.pairwise_svm import PairwiseSVC


@pytest.fixture(scope="module")
def digits():
    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    return features[:1000], labels[:1000], features[1000:], labels[1000:]


@pytest.mark.parametrize("C", [1.0, 10.0])
@pytest.mark.parametrize("max_pair_samples", [16_000, 0])  # kernels precomputed / every pair on its features
def test_same_model_as_svc(digits, C, max_pair_samples):
    x_train, y_train, x_test, _ = digits
    reference = SVC(C=C, gamma="scale", decision_function_shape="ovo").fit(x_train, y_train)
    ours = PairwiseSVC(C=C, max_pair_samples=max_pair_samples, decision_function_shape="ovo").fit(x_train, y_train)
    assert np.array_equal(ours.predict(x_test), reference.predict(x_test))
    # the solver stops at tolerance 1e-3: decision values agree to about that, not bit for bit
    np.testing.assert_allclose(ours.decision_function(x_test), reference.decision_function(x_test), atol=1e-2)
    np.testing.assert_allclose(ours.intercept_, reference.intercept_, atol=1e-2)
    assert ours.gamma_ == pytest.approx(reference._gamma)
    assert ours.dual_coef_.shape[0] == len(ours.classes_) - 1
    assert np.abs(ours.n_support_ - reference.n_support_).max() <= 2  # vectors with alpha ~ 0 may differ


@pytest.mark.parametrize("classes", [10, 2])
def test_one_vs_rest_decision_values_are_svcs(digits, classes):
    """SVC's default shape: per class its votes plus a confidence (for two classes one column, positive for
    classes_[1]); what probability calibration reads."""
    x_train, y_train, x_test, _ = digits
    keep = y_train < classes
    reference = SVC(C=10, gamma="scale").fit(x_train[keep], y_train[keep])
    ours = PairwiseSVC(C=10).fit(x_train[keep], y_train[keep])
    expected = reference.decision_function(x_test)
    difference = ours.decision_function(x_test) - expected
    assert difference.shape == expected.shape
    # a pair's decision within the solver's tolerance of zero may vote the other way: a whole vote moves
    np.testing.assert_allclose(difference, np.round(difference), atol=1e-2)
    assert (np.abs(difference) > 0.5).mean() < 2e-3
    with pytest.raises(ValueError, match="'ovr' or 'ovo'"):
        ours.set_params(decision_function_shape="ovx").decision_function(x_test)


def test_labels_of_any_type_and_unequal_classes(digits):
    x_train, y_train, x_test, _ = digits
    keep = (y_train != 3) | (np.arange(len(y_train)) % 4 == 0)  # class 3 much smaller than the others
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    reference = SVC(C=10).fit(x_train[keep], names[y_train[keep]])
    ours = PairwiseSVC(C=10).fit(x_train[keep], names[y_train[keep]])
    assert np.array_equal(ours.predict(x_test), reference.predict(x_test))


@pytest.mark.parametrize("class_weight", ["balanced", {3: 5.0, 8: 0.5}])
@pytest.mark.parametrize("max_pair_samples", [16_000, 0])
def test_class_weights_are_svcs(digits, class_weight, max_pair_samples):
    """Each class's C times its weight in every pair, 'balanced' counted over all the classes: as libsvm does."""
    x_train, y_train, x_test, _ = digits
    keep = (y_train != 3) | (np.arange(len(y_train)) % 10 == 0)  # 10 threes against about 100 of each other digit
    x_train, y_train = x_train[keep], y_train[keep]
    reference = SVC(C=0.1, class_weight=class_weight).fit(x_train, y_train)
    ours = PairwiseSVC(C=0.1, class_weight=class_weight, max_pair_samples=max_pair_samples).fit(x_train, y_train)
    assert np.array_equal(ours.predict(x_test), reference.predict(x_test))
    # the weights change the model, so the equality above says they are applied as SVC applies them
    assert not np.array_equal(reference.predict(x_test), SVC(C=0.1).fit(x_train, y_train).predict(x_test))


def test_one_class_is_refused(digits):
    x_train, y_train, _, _ = digits
    with pytest.raises(ValueError, match="2 or more classes"):
        PairwiseSVC().fit(x_train[y_train == 0], y_train[y_train == 0])
