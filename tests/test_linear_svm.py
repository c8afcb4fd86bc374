"""LBFGSLinearSVC is LinearSVC's model with an unpenalised intercept: checked against liblinear, whose intercept
penalty vanishes with a large intercept_scaling, and against the loss written out by hand."""

import numpy as np
import pytest
from scipy.optimize import check_grad
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler, label_binarize
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classify.linear_svm import LBFGSLinearSVC, squared_hinge_loss


@pytest.fixture(scope="module")
def digits():
    features, labels = load_digits(return_X_y=True)
    features = StandardScaler().fit_transform(features)
    return features[:1000], labels[:1000], features[1000:], labels[1000:]


def liblinear(C: float) -> LinearSVC:
    """liblinear's LinearSVC with its intercept penalty made negligible (it penalises intercept / scaling)."""
    return LinearSVC(C=C, intercept_scaling=100, tol=1e-8, max_iter=200_000)


@pytest.mark.parametrize("C", [0.001, 0.1])
def test_same_model_as_liblinear(digits, C):
    x_train, y_train, x_test, _ = digits
    reference = liblinear(C).fit(x_train, y_train)
    ours = LBFGSLinearSVC(C=C, tol=1e-6).fit(x_train, y_train)
    assert np.array_equal(ours.predict(x_test), reference.predict(x_test))
    np.testing.assert_allclose(ours.decision_function(x_test), reference.decision_function(x_test), atol=1e-2)
    np.testing.assert_allclose(ours.coef_, reference.coef_, atol=1e-3)
    assert ours.coef_.shape == reference.coef_.shape and ours.intercept_.shape == reference.intercept_.shape


def test_default_tolerance_predicts_as_liblinear(digits):
    x_train, y_train, x_test, _ = digits
    agree = LBFGSLinearSVC(C=0.01).fit(x_train, y_train).predict(x_test) == liblinear(0.01).fit(
        x_train, y_train).predict(x_test)
    assert agree.mean() >= 0.99


def test_two_classes_with_string_labels(digits):
    x_train, y_train, x_test, y_test = digits
    keep, keep_test = np.isin(y_train, [3, 8]), np.isin(y_test, [3, 8])
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    reference = liblinear(0.01).fit(x_train[keep], names[y_train[keep]])
    ours = LBFGSLinearSVC(C=0.01, tol=1e-6).fit(x_train[keep], names[y_train[keep]])
    assert list(ours.classes_) == ["eight", "three"] and ours.coef_.shape == (1, 64)
    scores = ours.decision_function(x_test[keep_test])
    assert scores.shape == (keep_test.sum(),)  # positive means classes_[1], as scikit-learn's binary classifiers
    np.testing.assert_allclose(scores, reference.decision_function(x_test[keep_test]), atol=1e-2)
    assert np.array_equal(ours.predict(x_test[keep_test]), reference.predict(x_test[keep_test]))


def test_float32_features_give_the_float64_model(digits):
    x_train, y_train, x_test, _ = digits
    single = LBFGSLinearSVC(C=0.01).fit(x_train.astype(np.float32), y_train)
    double = LBFGSLinearSVC(C=0.01).fit(x_train, y_train)
    assert (single.predict(x_test.astype(np.float32)) == double.predict(x_test)).mean() >= 0.99


def test_loss_is_liblinear_objective_over_c_n_and_gradient_is_exact():
    rng = np.random.default_rng(0)
    n, d, k, c = 3000, 7, 4, 0.3  # n above the row block: the blocked sum is checked too
    x, y = rng.standard_normal((n, d)), rng.integers(0, k, n)
    signs = label_binarize(y, classes=np.arange(k), neg_label=-1).astype(np.float64)
    params = rng.standard_normal(d * k + k) * 0.3
    weights, intercept = params[: d * k].reshape(d, k), params[d * k:]
    margins = signs * (x @ weights + intercept)
    liblinear_objective = c * np.sum(np.maximum(0, 1 - margins) ** 2) + 0.5 * np.sum(weights ** 2)
    loss, _ = squared_hinge_loss(params, x, signs, c)
    assert loss == pytest.approx(liblinear_objective / (c * n), rel=1e-10)
    error = check_grad(lambda p: squared_hinge_loss(p, x, signs, c)[0], lambda p: squared_hinge_loss(p, x, signs, c)[1],
                       params)
    assert error < 1e-5 * np.linalg.norm(squared_hinge_loss(params, x, signs, c)[1])


def test_a_class_weight_counts_as_copies_of_its_rows(digits):
    """Weight 3 for a class is its rows three times over: the same minimiser, at the same C (the loss and the
    penalty are both divided by the number of rows)."""
    x_train, y_train, x_test, _ = digits
    weighted = LBFGSLinearSVC(C=0.01, tol=1e-8, class_weight={3: 3.0}).fit(x_train, y_train)
    threes = np.flatnonzero(y_train == 3)
    copies = np.concatenate([np.arange(len(y_train)), threes, threes])
    copied = LBFGSLinearSVC(C=0.01, tol=1e-8).fit(x_train[copies], y_train[copies])
    np.testing.assert_allclose(weighted.coef_, copied.coef_, atol=1e-4)
    np.testing.assert_allclose(weighted.intercept_, copied.intercept_, atol=1e-4)
    plain = LBFGSLinearSVC(C=0.01, tol=1e-8).fit(x_train, y_train)
    assert np.abs(plain.coef_ - weighted.coef_).max() > 1e-2  # the weight does change the model


def test_balanced_weights_lift_a_small_class(digits):
    x_train, y_train, x_test, y_test = digits
    keep = (y_train != 3) | (np.arange(len(y_train)) % 20 == 0)  # 5 threes against about 100 of each other digit
    plain = LBFGSLinearSVC(C=0.001).fit(x_train[keep], y_train[keep])
    balanced = LBFGSLinearSVC(C=0.001, class_weight="balanced").fit(x_train[keep], y_train[keep])
    recall = [np.mean(model.predict(x_test[y_test == 3]) == 3) for model in (plain, balanced)]
    assert recall[1] > recall[0] + 0.2, recall


def test_weighted_loss_gradient_is_exact():
    rng = np.random.default_rng(1)
    n, d, k, c = 1500, 5, 3, 0.2
    x, y = rng.standard_normal((n, d)), rng.integers(0, k, n)
    signs = label_binarize(y, classes=np.arange(k), neg_label=-1).astype(np.float64)
    row_weights = rng.uniform(0.2, 3.0, n)
    params = rng.standard_normal(d * k + k) * 0.3
    weights, intercept = params[: d * k].reshape(d, k), params[d * k:]
    slack = np.maximum(0, 1 - signs * (x @ weights + intercept))
    expected = np.sum(row_weights[:, None] * slack ** 2) / n + np.sum(weights ** 2) / (2 * c * n)
    assert squared_hinge_loss(params, x, signs, c, row_weights)[0] == pytest.approx(expected, rel=1e-10)
    error = check_grad(lambda p: squared_hinge_loss(p, x, signs, c, row_weights)[0],
                       lambda p: squared_hinge_loss(p, x, signs, c, row_weights)[1], params)
    assert error < 1e-5 * np.linalg.norm(squared_hinge_loss(params, x, signs, c, row_weights)[1])


@parametrize_with_checks([LBFGSLinearSVC()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
