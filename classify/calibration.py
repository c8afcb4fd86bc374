"""Temperature scaling: one scalar that softens an overconfident softmax, or sharpens an underconfident one, without
changing a prediction (the frozen heads' probabilities come from scikit-learn and `coupling`)."""

from __future__ import annotations

import math

import numpy as np

MAX_TEMPERATURE = 20.0
MIN_TEMPERATURE = 0.05


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T for which softmax(logits / T) has the least log loss on these (validation) images: temperature scaling
    (Guo et al. 2017). One scalar fixes most of a network's miscalibration without changing any prediction: a network
    fine-tuned with cross-entropy is overconfident (T > 1), an LP-FT network that kept its strongly regularised probe
    is underconfident (T < 1). T sharpens only where some validation image is predicted wrong, which bounds the
    loss as T shrinks; a split the network gets all right would otherwise sharpen it without end."""
    from scipy.optimize import minimize_scalar

    all_right = bool(np.all(logits.argmax(1) == labels))
    low = 1.0 if all_right else MIN_TEMPERATURE
    found = minimize_scalar(lambda log_t: softmax_log_loss(logits, labels, math.exp(log_t)),
                            bounds=(math.log(low), math.log(MAX_TEMPERATURE)), method="bounded")
    return math.exp(found.x)


def softmax_log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    rows = log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return -float(np.mean(rows[np.arange(len(labels)), labels]))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(logits / temperature, axis=1).astype(np.float32)
