"""Temperature scaling: one scalar that softens a fine-tuned network's overconfident softmax without changing a
prediction (the frozen heads' probabilities come from scikit-learn and `coupling`)."""

from __future__ import annotations

import math

import numpy as np

MAX_TEMPERATURE = 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [1, MAX_TEMPERATURE] for which softmax(logits / T) has the least log loss on these (validation)
    images: temperature scaling (Guo et al. 2017). A network fine-tuned with cross-entropy is overconfident, and one
    scalar fixes most of it without changing any prediction. T only softens: a small validation split that the
    network gets all right would otherwise sharpen it further."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(lambda log_t: softmax_log_loss(logits, labels, math.exp(log_t)),
                            bounds=(0.0, math.log(MAX_TEMPERATURE)), method="bounded")
    return math.exp(found.x)


def softmax_log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    rows = log_softmax(logits.astype(np.float64) / temperature, axis=1)
    return -float(np.mean(rows[np.arange(len(labels)), labels]))


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(logits / temperature, axis=1).astype(np.float32)
