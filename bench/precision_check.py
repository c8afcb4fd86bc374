"""Does a reduced precision change what the heads learn? The same dataset extracted twice, in fp32 and in bf16
(or fp16), compared on all of it.

    python bench/precision_check.py FP32_CACHE OTHER_CACHE [--heads "logreg:C=0.001 linearsvm:C=0.001 svm:C=10"]

Prints the per-image cosine similarity of the two feature sets, and each head's test accuracy on both, fitted with
the same fixed parameters (the default sweeps' choices on CIFAR-10) so that only the features differ. The rule of
bench/extract_speed.py applies: a precision is the default only if no accuracy moves by 0.3 points or more.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.heads import build_head, parse_grid, svm_is_pairwise  # noqa: E402
from extract.store import open_cache  # noqa: E402


def parse_heads(text: str, pairwise_svm: bool) -> list[tuple[str, dict]]:
    """'logreg:C=0.01 svm:C=10;gamma=scale' -> [('logreg', {'clf__C': 0.01}), ('svm', {...})], one value each."""
    heads = []
    for item in text.split():
        head, _, params = item.partition(":")
        grid = parse_grid(params, head, pairwise=head == "svm" and pairwise_svm)
        heads.append((head, {name: values[0] for name, values in grid.items()}))
    return heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", help="the fp32 cache file")
    parser.add_argument("other", help="the same data in another precision")
    parser.add_argument("--heads", default="logreg:C=0.001 linearsvm:C=0.001 svm:C=10",
                        help="HEAD:NAME=VALUE[;NAME=VALUE] items separated by spaces, one value per parameter")
    args = parser.parse_args()

    caches = [open_cache(args.reference), open_cache(args.other)]
    data = [(cache.load("train"), cache.load("test")) for cache in caches]
    for split in (0, 1):
        assert list(data[0][split][2]) == list(data[1][split][2]), "the two caches hold other images"
    a, b = (np.concatenate([train[0], test[0]]) for train, test in data)
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    precisions = [cache.info.precision for cache in caches]
    print(f"{caches[0].path.name} ({precisions[0]}) against {caches[1].path.name} ({precisions[1]})")
    print(f"{len(a)} images; feature cosine similarity: mean {cosine.mean():.5f}, 1st percentile "
          f"{np.percentile(cosine, 1):.5f}, min {cosine.min():.5f}\n", flush=True)

    print(f"| head | params | {precisions[0]} test acc | {precisions[1]} test acc | moved (points) | fit s |")
    print("|---|---|---:|---:|---:|---:|")
    pairwise = svm_is_pairwise(len(data[0][0][1]))
    for head, params in parse_heads(args.heads, pairwise):
        accuracies, seconds = [], 0.0
        for (x_train, y_train, _), (x_test, y_test, _) in data:
            model = build_head(head, pairwise=head == "svm" and pairwise).set_params(**params)
            if "random_state" in model.named_steps["clf"].get_params():
                model.set_params(clf__random_state=0)
            started = time.perf_counter()
            model.fit(x_train, y_train)
            seconds += time.perf_counter() - started
            accuracies.append(float(np.mean(model.predict(x_test) == y_test)))
        moved = (accuracies[1] - accuracies[0]) * 100
        shown = ", ".join(f"{key[5:]}={value}" for key, value in params.items())
        print(f"| {head} | {shown} | {accuracies[0]:.4f} | {accuracies[1]:.4f} | {moved:+.2f} | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
