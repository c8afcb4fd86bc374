"""The four-quadrant advisor: measure a dataset's size and its similarity to ImageNet, recommend a strategy.

Size is counted. Similarity is measured on a probe sample (the first `probe_per_class` train images of each
class), from features that go through the feature cache:

- ImageNet confidence: the mean top-1 softmax probability the pretrained classifier gives the images over its
  1,000 ImageNet classes. Photos of ImageNet-like things get confident answers; digits and textures do not.
- Top-layer margin: cross-validated linear-probe accuracy of the penultimate layer minus that of the best earlier
  stage. Where ImageNet features fit the data, accuracy climbs to the top layer; far from ImageNet it peaks earlier.

A dataset is `similar` when both signals pass their thresholds. The thresholds come from the calibration in
docs/advisor.md (bench/advisor_calibration.py reproduces it).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score

from classify.conventions import classes_uneven
from classify.heads import build_head
from extract.backbones import DEFAULT_BACKBONE
from extract.datasets import resolve_dataset
from extract.errors import UsageError
from extract.features import ExtractionSettings
from extract.layers import NoLogitsError
from extract.run import ExtractRequest, extract_to_cache
from extract.store import DEFAULT_CACHE_DIR, open_cache

# Thresholds, calibrated in docs/advisor.md.
# train images in the smallest class from which fine-tuning is recommended: for data close to ImageNet, lp-ft
# (it starts at the linear probe; it beat frozen features from 100 a class on CIFAR-10's learning curve); for data
# far from it, full fine-tuning from ImageNet weights (it lost to frozen earlier layers even at 1,000 a class)
LARGE_PER_CLASS = {"similar": 100, "dissimilar": 1000}
MIN_CONFIDENCE = 0.20  # mean top-1 ImageNet probability from which a dataset counts as similar
MIN_TOP_LAYER_MARGIN = 0.0  # penultimate probe accuracy minus the best earlier stage's, from which: similar
PROBE_PER_CLASS = 50
IMAGENET_CLASSES = 1000  # the confidence threshold was calibrated on ImageNet-1k class scores
PROBE_C = 0.1  # logistic regression on standardised features, the middle of classify's logreg grid

# The frozen recipe with the most accuracy on photos (docs/benchmarks.md, "Frozen features: ensembles"): the offline
# EfficientNet-Lite backbones side by side under one RBF SVM. ENSEMBLE_GAIN is what it measured over Lite0 alone
# (bench/frozen_recipes.py); ENSEMBLE_COST its extraction time over Lite0's: 4.3 (clothing) to 5.6 (all of
# CIFAR-10) measured, 4.8 by the three networks' multiply-adds. Recommended with frozen top-layer features only: on
# data far from ImageNet it measured +0.9 (aerial scenes) and nothing (steel defects, where Lite0 scores 0.997).
ENSEMBLE_MEMBERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ENSEMBLE_GAIN = "measured +3.6 points on all of CIFAR-10, +4.2 at 100 images a class, +4.0 on clothing photos"
ENSEMBLE_COST = 5.0

STRATEGIES = {
    ("small", "similar"): ("frozen", "frozen top-layer (penultimate) features and a linear or SVM head"),
    ("small", "dissimilar"): ("frozen-layers", "frozen features of every stage, the layer chosen by cross-"
                                               "validation (an earlier one, as a rule), and a linear head"),
    ("large", "similar"): ("lp-ft", "fine-tune the whole network from the linear probe of the cached features "
                                    "(LP-FT): it starts where frozen features end"),
    ("large", "dissimilar"): ("full", "fine-tune the whole network, starting from ImageNet weights"),
}

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


@dataclass
class Advice:
    dataset: str
    backbone: str
    size: str
    similarity: str
    quadrant: str
    strategy: str
    recommendation: str
    command: str
    signals: dict
    thresholds: dict
    ensemble: dict | None = None  # the frozen recipe with the most accuracy, where it applies: command, gain, time

    def to_dict(self) -> dict:
        return asdict(self)


def measure_size(dataset: str, data_root: str = "data", limit_per_class: int | None = None) -> dict:
    """Train images in all, per class, in the smallest class (which decides) and in the largest."""
    resolved = resolve_dataset(dataset, data_root, limit_per_class)
    counts = np.bincount(resolved.splits["train"].labels, minlength=len(resolved.class_names))
    return {"train_images": int(counts.sum()), "images": sum(len(split) for split in resolved.splits.values()),
            "classes": len(counts), "smallest_class": int(counts.min()),
            "largest_class": int(counts.max()), "class_names": resolved.class_names}


def probe_layers(features: np.ndarray, labels: np.ndarray, layout: dict, cv: int) -> dict[str, float]:
    """Cross-validated accuracy of the same linear probe on each cached layer (logits left out)."""
    folds = StratifiedKFold(cv, shuffle=True, random_state=0)
    return {name: float(cross_val_score(build_head("logreg", layout, name).set_params(clf__C=PROBE_C),
                                        features, labels, cv=folds).mean())
            for name in layout if name != "logits"}


def imagenet_confidence(logits: np.ndarray) -> tuple[float, float]:
    """Mean top-1 softmax probability, and mean entropy as a fraction of the maximum (log of the class count)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1) / np.log(logits.shape[1])
    return float(probabilities.max(axis=1).mean()), float(entropy.mean())


def measure_similarity(dataset: str, backbone: str = DEFAULT_BACKBONE, probe_per_class: int = PROBE_PER_CLASS,
                       image_size: int | None = None, cache_dir: str = DEFAULT_CACHE_DIR, data_root: str = "data",
                       settings: ExtractionSettings | None = None, log: Callable[[str], None] = _logger.info) -> dict:
    """Both similarity signals, from every stage, the penultimate layer and the logits of the probe sample."""
    try:
        extracted = extract_to_cache(ExtractRequest(
            backbone=backbone, dataset=dataset, layers="all,logits", image_size=image_size,
            limit_per_class=probe_per_class, data_root=data_root, cache_dir=cache_dir,
            settings=settings or ExtractionSettings()), log=log)
    except NoLogitsError:
        raise UsageError(f"the advisor reads ImageNet-1k class scores, and {backbone} was built without a "
                         "classifier; advise with an ImageNet-1k backbone (the default), then run the one you like"
                         ) from None
    cache = open_cache(extracted.path)
    features, labels, _ = cache.load("train")
    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise UsageError("the advisor needs at least 2 train images in every class to cross-validate its probe")
    start, stop = cache.layout["logits"]
    if stop - start != IMAGENET_CLASSES:
        raise UsageError(f"the advisor reads ImageNet-1k class scores, and {backbone}'s classifier has {stop - start} "
                         "classes; advise with an ImageNet-1k backbone (the default), then run the one you like")
    confidence, entropy = imagenet_confidence(features[:, start:stop])
    accuracy = probe_layers(features, labels, cache.layout, cv=min(3, smallest))
    earlier = {name: score for name, score in accuracy.items() if name != "penultimate"}
    best_earlier = max(earlier, key=earlier.get)
    return {"probe_images": len(labels), "imagenet_confidence": confidence, "imagenet_entropy": entropy,
            "probe_accuracy": accuracy, "peak_layer": max(accuracy, key=accuracy.get),
            "best_earlier_layer": best_earlier,
            "top_layer_margin": accuracy["penultimate"] - earlier[best_earlier], "cache_file": str(extracted.path),
            "probe_images_per_second": float(cache.info.images_per_second)}


def recommend_command(strategy: str, backbone: str, dataset: str, image_size: int | None,
                      limit_per_class: int | None) -> str:
    """The command that runs the strategy: the comparison pipeline with that one strategy (what --run does)."""
    options = (f" --image-size {image_size}" if image_size else "") + (
        f" --limit-per-class {limit_per_class}" if limit_per_class else "")
    return (f"python -m pipelines compare {shlex.quote(backbone)} {shlex.quote(dataset)} --strategies {strategy}"
            f"{options}")


def ensemble_advice(backbone: str, dataset: str, images: int, images_per_second: float, image_size: int | None,
                    limit_per_class: int | None) -> dict | None:
    """The ensemble of the offline backbones, for the default backbone: its command, what it measured over one
    backbone, and its extraction time here, from the probe's speed (a lower bound: the probe is small)."""
    if backbone != ENSEMBLE_MEMBERS[0] or images_per_second <= 0:
        return None
    options = (f" --image-size {image_size}" if image_size else "") + (
        f" --limit-per-class {limit_per_class}" if limit_per_class else "")
    alone = images / images_per_second / 60
    return {"command": f"python -m extract {','.join(ENSEMBLE_MEMBERS)} {shlex.quote(dataset)}{options}",
            "gain": ENSEMBLE_GAIN, "minutes": alone * ENSEMBLE_COST, "minutes_alone": alone}


def advise(dataset: str, backbone: str = DEFAULT_BACKBONE, probe_per_class: int = PROBE_PER_CLASS,
           image_size: int | None = None, cache_dir: str = DEFAULT_CACHE_DIR, data_root: str = "data",
           limit_per_class: int | None = None, settings: ExtractionSettings | None = None,
           log: Callable[[str], None] = _logger.info) -> Advice:
    """Measure, decide the quadrant, and name the strategy with the command that runs it."""
    if probe_per_class < 2:
        raise UsageError(f"--probe-per-class must be 2 or more, not {probe_per_class}")
    size_signals = measure_size(dataset, data_root, limit_per_class)
    probe = min(probe_per_class, limit_per_class or probe_per_class)
    similarity_signals = measure_similarity(dataset, backbone, probe, image_size, cache_dir, data_root, settings, log)
    similar = (similarity_signals["imagenet_confidence"] >= MIN_CONFIDENCE
               and similarity_signals["top_layer_margin"] >= MIN_TOP_LAYER_MARGIN)
    similarity = "similar" if similar else "dissimilar"
    size = "large" if size_signals["smallest_class"] >= LARGE_PER_CLASS[similarity] else "small"
    strategy, recommendation = STRATEGIES[size, similarity]
    return Advice(
        dataset=dataset, backbone=backbone, size=size, similarity=similarity, quadrant=f"{size}, {similarity}",
        strategy=strategy, recommendation=recommendation,
        command=recommend_command(strategy, backbone, dataset, image_size, limit_per_class),
        signals={**{k: v for k, v in size_signals.items() if k != "class_names"}, **similarity_signals},
        ensemble=ensemble_advice(backbone, dataset, size_signals["images"],
                                 similarity_signals["probe_images_per_second"], image_size, limit_per_class)
        if strategy == "frozen" else None,
        thresholds={"large_per_class": LARGE_PER_CLASS[similarity], "min_imagenet_confidence": MIN_CONFIDENCE,
                    "min_top_layer_margin": MIN_TOP_LAYER_MARGIN})


def _verdict(value: float, threshold: float) -> str:
    return f"{'passes' if value >= threshold else 'below'} {threshold:+.2f}"


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"


def format_advice(advice: Advice) -> str:
    s, t = advice.signals, advice.thresholds
    probe = ", ".join(f"{name} {score:.3f}" for name, score in s["probe_accuracy"].items())
    return "\n".join([
        f"{advice.dataset} with {advice.backbone}",
        f"  size: {s['train_images']} train images, {s['classes']} classes, smallest class {s['smallest_class']} "
        f"-> {advice.size} (large from {t['large_per_class']} per class for {advice.similarity} data)",
        *([f"  uneven: the largest class has {s['largest_class']} train images; where the small classes matter as "
           "much as the large, add --balanced (python -m classify logreg --balanced, python -m pipelines compare "
           "... --balanced)"]
          if classes_uneven(s["largest_class"], s["smallest_class"]) else []),
        f"  ImageNet confidence (mean top-1 probability over 1000 classes, {s['probe_images']} probe images): "
        f"{s['imagenet_confidence']:.3f} ({_verdict(s['imagenet_confidence'], t['min_imagenet_confidence'])}); "
        f"normalised entropy {s['imagenet_entropy']:.3f}",
        f"  linear-probe CV accuracy by layer: {probe}",
        f"  top-layer margin (penultimate - best earlier, {s['best_earlier_layer']}): {s['top_layer_margin']:+.3f} "
        f"({_verdict(s['top_layer_margin'], t['min_top_layer_margin'])})",
        f"similarity: {advice.similarity} (similar when both pass)",
        f"quadrant: {advice.quadrant}",
        f"recommended: {advice.recommendation}",
        f"  {advice.command}",
        *([f"most accuracy from frozen features: {len(ENSEMBLE_MEMBERS)} backbones side by side, "
           f"{advice.ensemble['gain']}",
           f"  extraction here about {_duration(advice.ensemble['minutes'])} against "
           f"{_duration(advice.ensemble['minutes_alone'])} for Lite0 alone; then the classify svm command it prints:",
           f"  {advice.ensemble['command']}"]
          if advice.ensemble else []),
    ])
