"""LP-FT's first step (Kumar et al., ICLR 2022): the logistic-regression probe of the cached features becomes the
network's output layer, its scaler folded in, so that before any update the network predicts what the probe does.

The probe is fitted on the fine-tuning train part only (the validation part left out), with C chosen by
cross-validation over `classify`'s default logreg grid, through the feature cache (a later `compare` or
`classify` run reuses the same entry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from torch import nn

from classify.heads import DEFAULT_GRIDS, build_head
from extract.datasets import Dataset
from extract.errors import UsageError
from extract.features import ExtractionSettings
from extract.layers import DEFAULT_LAYER
from extract.run import ExtractRequest, ExtractResult, extract_to_cache
from extract.store import open_cache
from pipelines.finetune.config import FinetuneConfig

ABSENT_CLASS_MARGIN = 30.0  # logits below the lowest bias for classes without train images: never predicted


@dataclass
class ProbeHead:
    """A linear layer's weights (classes x features) and bias, and how the probe did on what it was fitted on."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    cv_score: float
    train_loss: float
    train_accuracy: float


def extract_features(config: FinetuneConfig, log: Callable[[str], None], layers: str = DEFAULT_LAYER,
                     flip: bool = False, cache_dir: str | None = None, progress: bool = False) -> ExtractResult:
    """The run's dataset through the feature cache (`config.cache_dir` unless given), as the run's backbone, weights,
    input size and precision give them: what lp-ft's probe and compare's frozen strategies read."""
    settings = ExtractionSettings(batch_size=max(config.batch_size, 32), device=config.device,
                                  precision=config.precision, workers=config.workers)
    return extract_to_cache(ExtractRequest(
        backbone=config.backbone, dataset=config.dataset, weights=config.weights, image_size=config.image_size,
        layers=layers, flip=flip, limit_per_class=config.limit_per_class,
        train_per_class=config.train_per_class, data_root=config.data_root, skip_bad=config.skip_bad,
        cache_dir=cache_dir or config.cache_dir, settings=settings, progress=progress), log=log)


def fit_probe_head(config: FinetuneConfig, dataset: Dataset, train_rows: np.ndarray,
                   log: Callable[[str], None], progress: bool = False) -> ProbeHead:
    """Features of the train part through the cache, the probe chosen by cross-validation, folded to one layer."""
    extracted = extract_features(config, log, progress=progress)
    features, labels, ids = open_cache(extracted.path).load("train")
    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    wanted = [dataset.splits["train"].ids[row] for row in train_rows]
    missing = [sample_id for sample_id in wanted if sample_id not in row_of]
    if missing:
        raise UsageError(f"the feature cache {extracted.path.name} lacks {len(missing)} train image(s) of this run "
                         f"({missing[0]}, ...): unreadable when it was extracted; fix or remove them")
    rows = np.asarray([row_of[sample_id] for sample_id in wanted])
    x, y = features[rows], labels[rows]
    folds = min(3, int(np.bincount(y)[np.unique(y)].min()))
    if folds < 2:
        raise UsageError("--mode lp-ft fits its probe by cross-validation: every class needs 2 or more train images "
                         "outside the validation split")
    search = GridSearchCV(build_head("logreg", balanced=config.balanced),
                          {f"clf__{name}": values for name, values in DEFAULT_GRIDS["logreg"].items()},
                          cv=StratifiedKFold(folds, shuffle=True, random_state=config.seed), n_jobs=1,
                          scoring="balanced_accuracy" if config.balanced else "accuracy")
    search.fit(x, y)
    probe = search.best_estimator_
    weight, bias = fold_scaler(probe.named_steps["scale"], probe.named_steps["clf"], len(dataset.class_names))
    probabilities = probe.predict_proba(x)
    head = ProbeHead(weight, bias, float(search.best_params_["clf__C"]), float(search.best_score_),
                     float(log_loss(y, probabilities, labels=probe.classes_)),
                     float(np.mean(probe.classes_[probabilities.argmax(1)] == y)))
    log(f"lp-ft: linear probe on the cached features of {len(y)} train images, C={head.C:g} (cv "
        f"{'balanced ' * config.balanced}accuracy {head.cv_score:.4f}), as the new output layer")
    return head


def fold_scaler(scaler, classifier, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One linear layer computing the scaled logistic regression's logits: W / s and b - (W / s) . mean, with a row
    for every class (a class the probe never saw sits far below the others; two classes: [0, z], whose softmax is
    the probe's sigmoid)."""
    coef, intercept = classifier.coef_, classifier.intercept_
    if coef.shape[0] == 1:  # binary: one decision function for classes_[1]
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    scaled = coef / scaler.scale_
    shifted = intercept - scaled @ scaler.mean_
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, shifted.min() - ABSENT_CLASS_MARGIN)
    weight[classifier.classes_], bias[classifier.classes_] = scaled, shifted
    return weight.astype(np.float32), bias.astype(np.float32)


@torch.no_grad()
def load_into(layer: nn.Module, head: ProbeHead) -> None:
    if not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != head.weight.shape:
        raise UsageError(f"--mode lp-ft needs a linear output layer taking the cached features; this one is "
                         f"{type(layer).__name__}")
    layer.weight.copy_(torch.from_numpy(head.weight))
    layer.bias.copy_(torch.from_numpy(head.bias))
