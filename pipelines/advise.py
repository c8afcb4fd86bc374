"""The four-quadrant advisor: measure a dataset's size and its similarity to ImageNet, recommend the cheapest
strategy expected within about a point of the best, and what the others would add in how long.

Size is counted. Everything else is measured on a probe sample (the first `probe_per_class` train images of each
class), from features that go through the feature cache:

- Top-layer margin: cross-validated linear-probe accuracy of the penultimate layer minus that of the best earlier
  stage. Where ImageNet features fit the data, accuracy climbs to the top layer; far from ImageNet it peaks earlier.
- The frozen probe's error: what frozen features leave for fine-tuning to win.
- For information: the ImageNet confidence (mean top-1 probability over the 1,000 classes), the probe's gain from
  half its images to all of them, and its train-minus-CV gap.

Times come from speeds measured here (pipelines/budget.py). The thresholds and the expected gains come from the
calibration in docs/advisor.md (bench/advisor_calibration.py reproduces it).
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score, learning_curve

from classify.conventions import classes_uneven
from classify.heads import build_head
from extract.backbones import DEFAULT_BACKBONE
from extract.datasets import resolve_dataset
from extract.errors import UsageError
from extract.features import ExtractionSettings
from extract.layers import NoLogitsError
from extract.run import ExtractRequest, extract_to_cache
from extract.store import DEFAULT_CACHE_DIR, open_cache
from pipelines.budget import DEFAULT_EPOCHS, STRATEGY_COST, expected_minutes, measure_speeds

# Thresholds, calibrated in docs/advisor.md on 18 sets of 7 families (bench/advisor_calibration.py).
MIN_TOP_LAYER_MARGIN = 0.0  # penultimate probe accuracy minus the best earlier stage's, from which: similar
# lp-ft is expected to win by more than a test split's noise where the smallest class has this many train images
# or more (fitted: right on 17 of 18 sets, 16 of 18 with each family left out) and the frozen probe misses this
# fraction of its images or more (the sets leave it free from 0.03 to 0.23; user reports of photo sets where frozen
# features scored 0.925 and lp-ft a point less put it above their error)
FINE_TUNE_MIN_PER_CLASS = 100
FINE_TUNE_MIN_PROBE_ERROR = 0.15
MIN_PER_CLASS = 5  # fewer train images in a class than this: not enough to tell, frozen is the safe choice
PROBE_PER_CLASS = 50
IMAGENET_CLASSES = 1000  # the confidence is read from ImageNet-1k class scores
PROBE_C = 0.1  # logistic regression on standardised features, the middle of classify's logreg grid
DEFAULT_BUDGET_MINUTES = 30.0  # what a user waits for without leaving the desk; --budget says otherwise

# Test-accuracy points each strategy gained over the frozen strategy of the set's similarity (frozen where similar,
# frozen-layers where not), lowest and highest, on the calibration sets where the rule recommended the same
EXPECTED_GAIN = {
    "frozen": {"frozen": (0.0, 0.0), "frozen-layers": (0.0, 0.0), "lp-ft": (-0.4, 0.5), "full": (-18.0, -18.0)},
    "frozen-layers": {"frozen": (-10.7, -0.4), "frozen-layers": (0.0, 0.0), "lp-ft": (-10.6, 3.2),
                      "full": (-62.9, -2.5)},
    "lp-ft": {"frozen": (0.0, 0.0), "frozen-layers": (-2.6, 0.0), "lp-ft": (2.4, 9.2), "full": (-14.0, 7.1)},
}

# The frozen recipe with the most accuracy on photos (docs/benchmarks.md, "Frozen features: ensembles"): the offline
# EfficientNet-Lite backbones side by side under one RBF SVM. ENSEMBLE_GAIN is what it measured over Lite0 alone
# (bench/frozen_recipes.py); ENSEMBLE_COST its extraction time over Lite0's: 4.3 (clothing) to 5.6 (all of
# CIFAR-10) measured, 4.8 by the three networks' multiply-adds. Offered with frozen top-layer features only: on
# data far from ImageNet it measured +0.9 (aerial scenes) and nothing (steel defects, where Lite0 scores 0.997).
ENSEMBLE_MEMBERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ENSEMBLE_GAIN = (0.9, 4.2)  # points over Lite0 alone: aerial scenes to CIFAR-10 at 100 a class
ENSEMBLE_COST = 5.0

RECOMMENDATIONS = {
    "frozen": "frozen top-layer (penultimate) features and a linear or SVM head",
    "frozen-layers": "frozen features of every stage, the layer chosen by cross-validation, and a linear head",
    "lp-ft": "fine-tune the whole network from the linear probe of the cached features (LP-FT)",
    "full": "fine-tune the whole network, starting from ImageNet weights",
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
    budget_minutes: float = DEFAULT_BUDGET_MINUTES
    # per strategy: minutes here, the points over the cheap frozen strategy measured in calibration, the command
    alternatives: dict = field(default_factory=dict)
    expected_accuracy: float | None = None  # of the recommended strategy, from the probe
    note: str | None = None  # why the rule was not applied, or why fine-tuning was left out
    ensemble: dict | None = None  # the frozen recipe with the most accuracy, where it applies: command, gain, time

    def to_dict(self) -> dict:
        return asdict(self)


def measure_size(dataset: str, data_root: str = "data", limit_per_class: int | None = None) -> dict:
    """Train and test images, per class, in the smallest class (which decides) and in the largest."""
    resolved = resolve_dataset(dataset, data_root, limit_per_class)
    counts = np.bincount(resolved.splits["train"].labels, minlength=len(resolved.class_names))
    return {"train_images": int(counts.sum()), "images": sum(len(split) for split in resolved.splits.values()),
            "classes": len(counts), "smallest_class": int(counts.min()),
            "largest_class": int(counts.max()), "class_names": resolved.class_names}


def _probe(layout: dict, layer: str):
    return build_head("logreg", layout, layer).set_params(clf__C=PROBE_C)


def probe_layers(features: np.ndarray, labels: np.ndarray, layout: dict, cv: int) -> dict[str, float]:
    """Cross-validated accuracy of the same linear probe on each cached layer (logits left out)."""
    folds = StratifiedKFold(cv, shuffle=True, random_state=0)
    return {name: float(cross_val_score(_probe(layout, name), features, labels, cv=folds).mean())
            for name in layout if name != "logits"}


def probe_learning_curve(features: np.ndarray, labels: np.ndarray, layout: dict, cv: int) -> dict[str, float]:
    """The penultimate probe on half and on all of each training fold: the CV accuracy gained by doubling the
    images, and the train accuracy minus the CV accuracy (how much it overfits)."""
    _, train, test = learning_curve(_probe(layout, "penultimate"), features, labels, train_sizes=[0.5, 1.0],
                                    cv=StratifiedKFold(cv, shuffle=True, random_state=0), shuffle=True,
                                    random_state=0)
    train, test = train.mean(axis=1), test.mean(axis=1)
    return {"probe_gain_per_doubling": float(test[1] - test[0]), "probe_train_cv_gap": float(train[1] - test[1])}


def imagenet_confidence(logits: np.ndarray) -> tuple[float, float]:
    """Mean top-1 softmax probability, and mean entropy as a fraction of the maximum (log of the class count)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=1) / np.log(logits.shape[1])
    return float(probabilities.max(axis=1).mean()), float(entropy.mean())


def measure_similarity(dataset: str, backbone: str = DEFAULT_BACKBONE, probe_per_class: int = PROBE_PER_CLASS,
                       image_size: int | None = None, cache_dir: str = DEFAULT_CACHE_DIR, data_root: str = "data",
                       settings: ExtractionSettings | None = None, log: Callable[[str], None] = _logger.info,
                       progress: bool = False, skip_bad: bool = False) -> dict:
    """The probe's signals, from every stage, the penultimate layer and the logits of the probe sample."""
    try:
        extracted = extract_to_cache(ExtractRequest(
            backbone=backbone, dataset=dataset, layers="all,logits", image_size=image_size,
            limit_per_class=probe_per_class, data_root=data_root, cache_dir=cache_dir,
            settings=settings or ExtractionSettings(), progress=progress, skip_bad=skip_bad), log=log)
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
    cv = min(3, smallest)
    accuracy = probe_layers(features, labels, cache.layout, cv)
    earlier = {name: score for name, score in accuracy.items() if name != "penultimate"}
    best_earlier = max(earlier, key=earlier.get)
    return {"probe_images": len(labels), "imagenet_confidence": confidence, "imagenet_entropy": entropy,
            "probe_accuracy": accuracy, "peak_layer": max(accuracy, key=accuracy.get),
            "best_earlier_layer": best_earlier,
            "top_layer_margin": accuracy["penultimate"] - earlier[best_earlier],
            **probe_learning_curve(features, labels, cache.layout, cv), "cache_file": str(extracted.path)}


def choose_strategy(signals: dict, min_per_class: int | None = None, min_probe_error: float | None = None) -> str:
    """The rule: lp-ft where the top layer is the best probe (lp-ft starts from it), the smallest class has enough
    images to learn from, and frozen features leave enough error; else frozen features of the layer the margin
    points to. Full fine-tuning is never the answer: it lost to lp-ft on all 15 calibration sets that ran both."""
    pays = (frozen_strategy(signals) == "frozen"
            and signals["smallest_class"] >= (FINE_TUNE_MIN_PER_CLASS if min_per_class is None else min_per_class)
            and 1 - signals["probe_accuracy"]["penultimate"] >= (
                FINE_TUNE_MIN_PROBE_ERROR if min_probe_error is None else min_probe_error))
    return "lp-ft" if pays else frozen_strategy(signals)


def frozen_strategy(signals: dict) -> str:
    """Penultimate features where the top layer is the best probe, else the layer chosen by cross-validation."""
    return "frozen" if signals["top_layer_margin"] >= MIN_TOP_LAYER_MARGIN else "frozen-layers"


def expected_frozen_accuracy(signals: dict, probe_per_class: int) -> float:
    """The probe's CV accuracy carried to the whole train split along its own learning curve: the gain it measured
    from half its images to all for the first doubling, half as much for each further one (learning curves
    flatten), never above 1."""
    trained_per_class = probe_per_class * (1 - 1 / min(3, probe_per_class))
    doublings = max(0.0, math.log2(signals["smallest_class"] / trained_per_class))
    gain = max(0.0, signals["probe_gain_per_doubling"]) * 2 * (1 - 0.5 ** doublings)
    return min(1.0, signals["probe_accuracy"]["penultimate"] + gain)


def _data_options(image_size: int | None, limit_per_class: int | None) -> str:
    """The options naming the same images at the same size, for the commands the advice prints."""
    return (f" --image-size {image_size}" if image_size else "") + (
        f" --limit-per-class {limit_per_class}" if limit_per_class else "")


def recommend_command(strategy: str, backbone: str, dataset: str, image_size: int | None,
                      limit_per_class: int | None, epochs: int = DEFAULT_EPOCHS) -> str:
    """The command that runs the strategy: the comparison pipeline with that one strategy (what --run does)."""
    options = _data_options(image_size, limit_per_class) + (
        f" --epochs {epochs}" if epochs != DEFAULT_EPOCHS and strategy in ("lp-ft", "full") else "")
    return (f"python -m pipelines compare {shlex.quote(backbone)} {shlex.quote(dataset)} --strategies {strategy}"
            f"{options}")


def ensemble_advice(backbone: str, dataset: str, frozen_minutes: float, image_size: int | None,
                    limit_per_class: int | None) -> dict | None:
    """The ensemble of the offline backbones, for the default backbone: its command, what it measured over one
    backbone, and its time here (Lite0's, times what the three cost together)."""
    if backbone != ENSEMBLE_MEMBERS[0]:
        return None
    options = _data_options(image_size, limit_per_class)
    return {"command": f"python -m extract {','.join(ENSEMBLE_MEMBERS)} {shlex.quote(dataset)}{options}",
            "gain": ENSEMBLE_GAIN, "minutes": frozen_minutes * ENSEMBLE_COST, "minutes_alone": frozen_minutes}


def advise(dataset: str, backbone: str = DEFAULT_BACKBONE, probe_per_class: int = PROBE_PER_CLASS,
           image_size: int | None = None, cache_dir: str = DEFAULT_CACHE_DIR, data_root: str = "data",
           limit_per_class: int | None = None, settings: ExtractionSettings | None = None,
           log: Callable[[str], None] = _logger.info, budget_minutes: float = DEFAULT_BUDGET_MINUTES,
           epochs: int = DEFAULT_EPOCHS, progress: bool = False, skip_bad: bool = False) -> Advice:
    """Measure, then recommend the cheapest strategy expected within about a point of the best that fits
    `budget_minutes` here (fine-tuning for `epochs` epochs), with the command that runs it. `progress`: a bar over
    the probe's images on stderr; `skip_bad`: unreadable probe images left out, each named, as extract does."""
    if probe_per_class < 2:
        raise UsageError(f"--probe-per-class must be 2 or more, not {probe_per_class}")
    if not budget_minutes > 0:
        raise UsageError(f"--budget must be a positive number of minutes, not {budget_minutes:g}")
    if epochs < 1:
        raise UsageError(f"--epochs must be 1 or more, not {epochs}")
    size_signals = measure_size(dataset, data_root, limit_per_class)
    sized = {k: v for k, v in size_signals.items() if k != "class_names"}
    thresholds = {"fine_tune_min_per_class": FINE_TUNE_MIN_PER_CLASS, "min_top_layer_margin": MIN_TOP_LAYER_MARGIN,
                  "fine_tune_min_probe_error": FINE_TUNE_MIN_PROBE_ERROR}
    command = lambda strategy: recommend_command(strategy, backbone, dataset, image_size,  # noqa: E731
                                                 limit_per_class, epochs)
    if size_signals["smallest_class"] < MIN_PER_CLASS:
        return Advice(dataset=dataset, backbone=backbone, size="small", similarity="unknown", quadrant="small",
                      strategy="frozen", recommendation=RECOMMENDATIONS["frozen"], command=command("frozen"),
                      signals=sized, thresholds=thresholds, budget_minutes=budget_minutes,
                      note=f"not enough data to tell: the smallest class has {size_signals['smallest_class']} train "
                           f"images (the advisor measures from {MIN_PER_CLASS}); frozen is the safe choice")
    probe = min(probe_per_class, limit_per_class or probe_per_class)
    signals = {**sized, **measure_similarity(dataset, backbone, probe, image_size, cache_dir, data_root, settings,
                                             log, progress, skip_bad)}
    speeds = measure_speeds(backbone, image_size, size_signals["classes"])
    signals.update(extract_images_per_second=speeds.extract, train_images_per_second=speeds.train)
    choice = choose_strategy(signals)
    test_images = signals["images"] - signals["train_images"]
    alternatives = {strategy: {"minutes": expected_minutes(strategy, signals["train_images"], test_images, speeds,
                                                           epochs),
                               "gain": EXPECTED_GAIN[choice][strategy], "command": command(strategy)}
                    for strategy in STRATEGY_COST}
    strategy, note = choice, None
    if choice == "lp-ft" and alternatives["lp-ft"]["minutes"] > budget_minutes:
        strategy = frozen_strategy(signals)
        needed = alternatives["lp-ft"]["minutes"]
        note = (f"lp-ft is expected to gain, and needs about {_duration(needed)} here, over the budget of "
                f"{_duration(budget_minutes)}: --budget {math.ceil(needed)} allows it")
    if alternatives[strategy]["minutes"] > budget_minutes:
        note = ((note + "; ") if note else "") + (
            f"even {strategy} needs about {_duration(alternatives[strategy]['minutes'])} here, over the budget: "
            "--limit-per-class N advises on a sample, a GPU extracts faster")
    size = "large" if signals["smallest_class"] >= FINE_TUNE_MIN_PER_CLASS else "small"
    similarity = "similar" if frozen_strategy(signals) == "frozen" else "dissimilar"
    return Advice(
        dataset=dataset, backbone=backbone, size=size, similarity=similarity, quadrant=f"{size}, {similarity}",
        strategy=strategy, recommendation=RECOMMENDATIONS[strategy], command=command(strategy), signals=signals,
        thresholds=thresholds, budget_minutes=budget_minutes, alternatives=alternatives, note=note,
        expected_accuracy=expected_frozen_accuracy(signals, probe) if strategy != "lp-ft" else None,
        ensemble=ensemble_advice(backbone, dataset, alternatives["frozen"]["minutes"], image_size, limit_per_class)
        if strategy == "frozen" else None)


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"


def _points(gain: tuple[float, float]) -> str:
    return f"{gain[0]:+.1f} to {gain[1]:+.1f} points"


def format_advice(advice: Advice) -> str:
    s, t = advice.signals, advice.thresholds
    lines = [f"{advice.dataset} with {advice.backbone}: {s['train_images']} train images, {s['classes']} classes, "
             f"smallest class {s['smallest_class']}"]
    if classes_uneven(s["largest_class"], s["smallest_class"]):
        lines.append(f"  uneven: the largest class has {s['largest_class']} train images; where the small classes "
                     "matter as much as the large, add --balanced (python -m classify logreg --balanced, python -m "
                     "pipelines compare ... --balanced)")
    if "probe_accuracy" in s:
        error = 1 - s["probe_accuracy"]["penultimate"]
        lines += [
            f"signals, from a probe of {s['probe_images']} train images:",
            f"  top-layer margin {s['top_layer_margin']:+.3f} (penultimate probe minus {s['best_earlier_layer']}'s; "
            f"top-layer features from {t['min_top_layer_margin']:+.2f}) -> {frozen_strategy(s)}",
            f"  frozen probe error {error:.3f} (from {t['fine_tune_min_probe_error']:.2f}), smallest class "
            f"{s['smallest_class']} (from {t['fine_tune_min_per_class']}), with the margin: lp-ft "
            f"{'expected to pay' if choose_strategy(s) == 'lp-ft' else 'not expected to pay'}",
            f"  also measured: ImageNet confidence {s['imagenet_confidence']:.3f}, the probe's gain from half its "
            f"images {s['probe_gain_per_doubling']:+.3f}, its train minus CV accuracy {s['probe_train_cv_gap']:+.3f}"]
    lines += [f"quadrant: {advice.quadrant}", f"recommended: {advice.recommendation}"]
    if advice.strategy in advice.alternatives:
        expected = advice.alternatives[advice.strategy]
        probe = s["probe_accuracy"]["penultimate"]
        accuracy = "" if advice.expected_accuracy is None else f"about {advice.expected_accuracy:.2f} test accuracy" + (
            f" ({probe:.2f}, the probe's, at least), " if advice.expected_accuracy - probe >= 0.005 else ", ")
        lines.append(f"  expected: {accuracy}{_duration(expected['minutes'])} here")
    lines.append(f"  {advice.command}")
    if advice.note:
        lines.append(f"note: {advice.note}")
    others = [name for name in advice.alternatives if name != advice.strategy]
    if others:
        base = "frozen" if advice.similarity == "similar" else "frozen-layers"
        lines.append(f"the others: points over {base} on the calibration sets where the rule said the same, time "
                     f"here (budget {_duration(advice.budget_minutes)}):")
        lines += [f"  {name}: {_points(advice.alternatives[name]['gain'])}, "
                  f"{_duration(advice.alternatives[name]['minutes'])}" for name in others]
    if advice.ensemble:
        lines += [f"  {len(ENSEMBLE_MEMBERS)} backbones side by side: {_points(advice.ensemble['gain'])} over Lite0 "
                  f"measured on photos, {_duration(advice.ensemble['minutes'])}; then the classify svm command it "
                  "prints:", f"    {advice.ensemble['command']}"]
    return "\n".join(lines)
