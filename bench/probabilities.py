"""How good are the heads' probabilities on held-out images? `classify svm/linearsvm --probability` against logreg.

    python bench/probabilities.py CACHE_FILE [--cv 3]

Each head runs through `classify.train.train_head` with its default grid, as `python -m classify HEAD
[--probability]` does, and its saved model is scored on the cache's test split:
- accuracy of the saved model (with --probability it predicts its most probable class),
- log loss (lower is better; guessing among k classes gives ln k),
- expected calibration error over 10 bins of the predicted class's probability (0: it is right as often as it says),
- AUROC of that probability for telling right predictions from wrong ones (0.5: it tells nothing),
- the time of the whole training.
Also, as the alternative `--probability` does not take for the RBF SVM: one temperature on its one-vs-rest
decision values (its votes plus a confidence below 1/2), fitted on the same out-of-fold values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.base import clone  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from classify.evaluate import evaluate  # noqa: E402
from classify.models import load_model  # noqa: E402
from classify.train import class_probabilities, train_head  # noqa: E402
from extract.store import open_cache  # noqa: E402


def quality(model, features: np.ndarray, labels: np.ndarray, class_names: list[str]) -> tuple[float, ...]:
    """Test accuracy, log loss, expected calibration error (as `classify` prints them) and the AUROC of the
    predicted class's probability for telling right predictions from wrong."""
    predicted = model.predict(features)
    probabilities = class_probabilities(model, features, len(class_names))
    scores = evaluate(labels, predicted, class_names, probabilities)
    right = predicted == labels
    auroc = roc_auc_score(right, probabilities[np.arange(len(predicted)), predicted])
    return scores.accuracy, scores.log_loss, scores.calibration_error, auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache_file")
    parser.add_argument("--cv", type=int, default=3)
    args = parser.parse_args()

    cache = open_cache(args.cache_file)
    x_train, y_train, _ = cache.load("train")
    x_test, y_test, _ = cache.load("test")
    print(f"cache: {cache.path.name}\ntrain {x_train.shape}, test {x_test.shape}\n", flush=True)
    rows = []
    for head, probability in [("svm", True), ("linearsvm", True), ("logreg", False)]:
        started = time.perf_counter()
        result = train_head(cache.path, head, cv=args.cv, probability=probability,
                            log=lambda m: print(f"  {m}", flush=True))
        seconds = time.perf_counter() - started
        model, _ = load_model(result.model_file)
        rows.append((f"{head}{' --probability' if probability else ''}", result.best_params, seconds,
                     *quality(model, x_test, y_test, cache.class_names)))
        print(f"  {rows[-1][0]}: {seconds:.1f} s", flush=True)
        if head == "svm":  # the rejected alternative, on the same best parameters and folds
            svm = model.named_steps["clf"].estimator_
            started = time.perf_counter()
            folds = StratifiedKFold(args.cv, shuffle=True, random_state=0)
            tempered = CalibratedClassifierCV(clone(svm).set_params(decision_function_shape="ovr"),
                                              method="temperature", cv=folds, ensemble=False).fit(x_train, y_train)
            seconds = time.perf_counter() - started
            rows.append(("svm, one temperature on its votes", result.best_params, seconds,
                         *quality(tempered, x_test, y_test, cache.class_names)))
            print(f"  {rows[-1][0]}: {seconds:.1f} s (calibration alone)", flush=True)

    print("\n| head | best params | train s | test acc | log loss | ECE | AUROC right/wrong |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, params, seconds, accuracy, loss, calibration, auroc in rows:
        print(f"| {name} | {params} | {seconds:.1f} | {accuracy:.4f} | {loss:.4f} | {calibration:.4f} | "
              f"{auroc:.4f} |")


if __name__ == "__main__":
    main()
