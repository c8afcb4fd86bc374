"""Calibrate the advisor and check its advice against outcomes (by hand, not in the test suite; CPU: ~1 hour).

    python bench/calibration_datasets.py /tmp/calib          # the offline far-from-ImageNet folders
    python bench/advisor_calibration.py /tmp/calib [--only NAME] [--out reports/advisor-calibration]

For each calibration dataset: `advise` measures its signals and recommends a strategy (as `python -m pipelines
advise` does), then `compare` runs the recommended strategy and the alternatives on the same split, so the table
shows whether the recommendation won. Fine-tuning on this 2-core CPU is kept affordable with a 96 px input and a
few epochs; the frozen strategies use the same input size, so all rows of a dataset compare like with like.
Results go to OUT/NAME/ (compare's report) and OUT/calibration.json; the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract.features import ExtractionSettings  # noqa: E402
from pipelines.advise import advise  # noqa: E402
from pipelines.compare import compare  # noqa: E402
from pipelines.finetune import FinetuneConfig  # noqa: E402

CIFAR = str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10")
OUTCOME_SIZE = 96
EPOCHS = 4


def calibration_sets(calib: Path) -> list[dict]:
    """(name, dataset, train images per class, strategies to run): the recommended one is always among them."""
    return [
        {"name": "cifar10-100pc", "dataset": CIFAR, "limit": 100, "kind": "natural photos (ImageNet-like)"},
        {"name": "cifar10-1000pc", "dataset": CIFAR, "limit": 1000, "kind": "natural photos (ImageNet-like)"},
        {"name": "digits", "dataset": "digits", "limit": None, "kind": "8x8 handwritten digits, upsampled"},
        {"name": "gratings-100pc", "dataset": str(calib / "gratings"), "limit": 100, "kind": "synthetic gratings"},
        {"name": "cifar10-shuffled-100pc", "dataset": str(calib / "cifar10-shuffled"), "limit": 100,
         "kind": "CIFAR-10, pixel positions permuted"},
        {"name": "cifar10-shuffled-1000pc", "dataset": str(calib / "cifar10-shuffled"), "limit": 1000,
         "kind": "CIFAR-10, pixel positions permuted"},
    ]


def strategies_for(size: str) -> list[str]:
    return ["frozen", "frozen-layers", "head"] if size == "small" else ["frozen", "frozen-layers", "partial", "full"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calib", help="folder written by bench/calibration_datasets.py")
    parser.add_argument("--only", default=None, help="comma-separated names to run")
    parser.add_argument("--out", default="reports/advisor-calibration")
    parser.add_argument("--cache-dir", default="cache")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "calibration.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    chosen = set(args.only.split(",")) if args.only else None
    for entry in calibration_sets(Path(args.calib)):
        if chosen and entry["name"] not in chosen:
            continue
        started = time.perf_counter()
        advice = advise(entry["dataset"], cache_dir=args.cache_dir, settings=ExtractionSettings(),
                        limit_per_class=entry["limit"], log=lambda m: print(f"  {m}", file=sys.stderr))
        print(f"{entry['name']}: {advice.quadrant} -> {advice.strategy}", flush=True)
        strategies = strategies_for(advice.size)
        config = FinetuneConfig(dataset=entry["dataset"], limit_per_class=entry["limit"], image_size=OUTCOME_SIZE,
                                epochs=EPOCHS, patience=EPOCHS)
        rows = compare(config, strategies, args.cache_dir, str(out / entry["name"]),
                       log=lambda m: print(f"  {m}", file=sys.stderr))
        records[entry["name"]] = {
            **entry, "advice": advice.to_dict(), "seconds": time.perf_counter() - started,
            "outcomes": {row["strategy"]: {"test_accuracy": row["test_accuracy"], "detail": row["detail"]}
                         for row in rows}}
        record_path.write_text(json.dumps(records, indent=2))
    print_table(records)


def _verdict(recommended: str, accuracy: dict[str, float]) -> str:
    if recommended not in accuracy:
        return "not run"
    best = max(accuracy.values())
    if accuracy[recommended] < best:
        winner = max(accuracy, key=accuracy.get)
        return f"no: {winner} by {best - accuracy[recommended]:.3f}"
    tied = [s for s, a in accuracy.items() if a == best and s != recommended]
    return f"yes (tied with {', '.join(tied)})" if tied else "yes"


def print_table(records: dict) -> None:
    print("\n| dataset | kind | train/class | ImageNet confidence | probe accuracy by layer | top-layer margin | "
          "quadrant | recommended | test accuracy of each strategy | recommended wins? |")
    print("|---|---|---:|---:|---|---:|---|---|---|---|")
    for name, record in records.items():
        advice, signals = record["advice"], record["advice"]["signals"]
        outcomes = record["outcomes"]
        wins = _verdict(advice["strategy"], {s: o["test_accuracy"] for s, o in outcomes.items()})
        probe = ", ".join(f"{k.replace('stage', 's').replace('penultimate', 'pen')} {v:.2f}"
                          for k, v in signals["probe_accuracy"].items())
        accuracies = ", ".join(f"{s} {o['test_accuracy']:.3f}" for s, o in outcomes.items())
        print(f"| {name} | {record['kind']} | {signals['smallest_class']} | {signals['imagenet_confidence']:.3f} | "
              f"{probe} | {signals['top_layer_margin']:+.3f} | {advice['quadrant']} | {advice['strategy']} | "
              f"{accuracies} | {wins} |")


if __name__ == "__main__":
    main()
