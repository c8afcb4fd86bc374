"""The advisor's calibration: every candidate strategy on every dataset family we have, then the rule checked with
one family left out at a time (by hand, not in the test suite).

    python bench/calibration_datasets.py /tmp/calib --per-class 1000    # the synthetic far-from-ImageNet folders
    python bench/advisor_calibration.py outcomes /tmp/calib [--only NAME,...]   # CPU: about 2 hours, resumable
    python bench/advisor_calibration.py signals /tmp/calib               # advise on each set: minutes
    python bench/advisor_calibration.py table                            # the tables, as Markdown

`outcomes` runs `compare` with every candidate strategy on the same split of each set (the test split whole, the
train split cut to the size named), at one budget (BUDGET below); an interrupted run continues where it stopped.
CIFAR-10 at 20, 50, 1,000 and 5,000 a class and shuffled CIFAR-10 at 1,000 are read from the committed reports
instead (their budget is stated). `signals` runs `advise` on each set as a user would, at the budget's input size.
`table` prints the outcomes, the rule on each set fitted with and without its family, the gains `advise` prints,
and its times against the measured ones. Everything lands in OUT (reports/advisor-calibration).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipelines.advise as advisor  # noqa: E402
from classify.evaluate import accuracy_interval  # noqa: E402
from extract.datasets import resolve_dataset  # noqa: E402
from pipelines.budget import Speeds, expected_minutes  # noqa: E402
from pipelines.compare import compare  # noqa: E402
from pipelines.finetune import FinetuneConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
CANDIDATES = ("frozen", "frozen-layers", "lp-ft", "full")  # what advise can recommend
BUDGET = {"image_size": 128, "epochs": 3}  # one CPU budget for every set run here: input px, fine-tuning epochs


def calibration_sets(calib: Path) -> list[dict]:
    """Each family at two train sizes (per class; None: all of it). The test split is always whole."""
    families = [
        ("cifar10", str(SHARED / "cifar10"), "natural photos, 32 px (ImageNet-like objects)", (100,)),
        ("clothing", str(SHARED / "clothing"), "photos of clothes, uneven classes", (30, None)),
        ("rsscn7", str(SHARED / "rsscn7"), "aerial scenes", (30, None)),
        ("steel", str(SHARED / "steel"), "steel surface defects, grey", (30, None)),
        ("digits", "digits", "8x8 handwritten digits, upsampled", (30, None)),
        ("gratings", str(calib / "gratings"), "synthetic gratings", (30, 250)),
        ("shuffled", str(calib / "cifar10-shuffled"), "CIFAR-10, pixel positions permuted", (30, 250)),
    ]
    return [{"name": f"{family}-{size}pc" if size else family, "family": family, "dataset": dataset,
             "train_per_class": size, "kind": kind}
            for family, dataset, kind, sizes in families for size in sizes]


def run_outcomes(sets: list[dict], out: Path, cache_dir: str) -> None:
    record_path = out / "outcomes.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    for entry in sets:
        if entry["name"] in records:
            continue
        print(f"{entry['name']}: {', '.join(CANDIDATES)}", flush=True)
        started = time.perf_counter()
        config = FinetuneConfig(dataset=entry["dataset"], train_per_class=entry["train_per_class"],
                                patience=BUDGET["epochs"], **BUDGET)
        rows = compare(config, list(CANDIDATES), cache_dir, str(out / entry["name"]), resume=True,
                       log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        records[entry["name"]] = {**entry, "budget": dict(BUDGET), "seconds": time.perf_counter() - started,
                                  "outcomes": {row["strategy"]: {
                                      "test_accuracy": row["test_accuracy"],
                                      "interval": row["test_accuracy_interval"], "seconds": row["seconds"],
                                      "detail": row["detail"]} for row in rows}}
        record_path.write_text(json.dumps(records, indent=2))


# Outcomes read from committed reports: (set, family, dataset, train per class, kind, budget, test images,
# {strategy: report file}). CIFAR-10 at 96 px: lp-ft and frozen from the learning curve (3 epochs, --flip), the
# others from the first calibration (4 epochs); all of CIFAR-10 from the learning curve.
COMMITTED = [
    *((f"cifar10-{n}pc", "cifar10", str(SHARED / "cifar10"), n, "natural photos, 32 px (ImageNet-like objects)",
       "96 px, 3 epochs", 10000, {s: f"reports/cifar10-96px/train-{n}" for s in ("frozen", "lp-ft")})
      for n in (20, 50)),
    ("cifar10-1000pc", "cifar10", str(SHARED / "cifar10"), 1000, "natural photos, 32 px (ImageNet-like objects)",
     "96 px, 3-4 epochs", 10000, {"frozen": "reports/cifar10-96px/train-1000",
                                  "lp-ft": "reports/cifar10-96px/train-1000",
                                  "frozen-layers": "reports/advisor-calibration/cifar10-1000pc",
                                  "full": "reports/advisor-calibration/cifar10-1000pc"}),
    ("cifar10-all", "cifar10", str(SHARED / "cifar10"), None, "natural photos, 32 px (ImageNet-like objects)",
     "96 px, 3 epochs", 10000, {s: "reports/cifar10-96px/train-5000" for s in ("frozen", "lp-ft", "full")}),
    ("shuffled-1000pc", "shuffled", "{calib}/cifar10-shuffled", 1000, "CIFAR-10, pixel positions permuted",
     "96 px, 4 epochs", 2000, {s: "reports/advisor-calibration/cifar10-shuffled-1000pc"
                               for s in ("frozen", "frozen-layers", "full")}),
]


def committed_sets(calib: Path) -> list[dict]:
    return [{"name": name, "family": family, "dataset": dataset.format(calib=calib), "train_per_class": size,
             "kind": kind, "budget": budget, "test_images": tests, "sources": sources}
            for name, family, dataset, size, kind, budget, tests, sources in COMMITTED]


def read_committed(entry: dict) -> dict:
    outcomes = {}
    for strategy, folder in entry["sources"].items():
        row = next(r for r in json.loads((ROOT / folder / "results.json").read_text()) if r["strategy"] == strategy)
        correct = round(row["test_accuracy"] * entry["test_images"])
        outcomes[strategy] = {"test_accuracy": row["test_accuracy"], "seconds": row["seconds"], "source": folder,
                              "interval": list(accuracy_interval(correct, entry["test_images"]))}
    return {**entry, "outcomes": outcomes}


def run_signals(sets: list[dict], out: Path, cache_dir: str) -> None:
    """advise as a user runs it, on each set at the outcomes' input size (no budget: the rule alone)."""
    record_path = out / "signals.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    for entry in sets:
        advice = advisor.advise(entry["dataset"], cache_dir=cache_dir, limit_per_class=entry["train_per_class"],
                                image_size=BUDGET["image_size"], epochs=BUDGET["epochs"], budget_minutes=1e9,
                                log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        records[entry["name"]] = advice.to_dict()
        print(f"{entry['name']}: {advice.quadrant} -> {advice.strategy}", flush=True)
        record_path.write_text(json.dumps(records, indent=2))


def right_answers(outcomes: dict) -> tuple[str, set[str]]:
    """The best strategy, and the right answers: the cheapest within one point of the best, and the best."""
    accuracy = {s: o["test_accuracy"] for s, o in outcomes.items()}
    best = max(accuracy, key=accuracy.get)
    within = [s for s in CANDIDATES if s in accuracy and accuracy[s] >= accuracy[best] - 0.01]
    return best, {within[0], best}  # CANDIDATES runs from the cheapest to the dearest


def rule_strategy(signals: dict, min_per_class: float, min_error: float) -> str:
    return advisor.choose_strategy(signals, min_per_class, min_error)


SIZE_GRID = (30, 50, 100, 200, 300, 500, 1000)
ERROR_GRID = tuple(round(0.025 * i, 3) for i in range(1, 21))
ERROR_PER_DOUBLING = 0.05  # how far one doubling of the images reaches on the error axis, for the margin


def margin(signals: dict, size: int, error: float) -> float:
    """How far a set sits from the rule's boundary: doublings of the images, or steps of ERROR_PER_DOUBLING."""
    doublings = math.log2(signals["smallest_class"] / size)
    steps = (1 - signals["probe_accuracy"]["penultimate"] - error) / ERROR_PER_DOUBLING
    return min(doublings, steps) if doublings >= 0 and steps >= 0 else max(-doublings, 0) + max(-steps, 0)


def scored_rows(rows: list[dict]) -> list[dict]:
    """The sets where both answers the rule can give (lp-ft and the frozen strategy of their similarity) were run."""
    return [r for r in rows if all(s in r["outcomes"] for s in ("lp-ft", advisor.frozen_strategy(r["signals"])))]


def fit_rule(rows: list[dict], error: float = advisor.FINE_TUNE_MIN_PROBE_ERROR) -> int:
    """The size threshold right on the most sets whose answer was run, at the shipped error threshold; among ties,
    the widest margin to the sets the rule may fine-tune (as a maximum-margin classifier picks its boundary)."""
    scored = scored_rows(rows)
    similar = [r for r in scored if advisor.frozen_strategy(r["signals"]) == "frozen"]  # the others never fine-tune

    def score(size: int) -> tuple[int, float]:
        right = sum(rule_strategy(r["signals"], size, error) in r["right"] for r in scored)
        return right, min((margin(r["signals"], size, error) for r in similar), default=0.0)
    return max(SIZE_GRID, key=score)


def free_errors(rows: list[dict], size: int) -> list[float]:
    """The error thresholds right on as many sets as the best, at that size threshold: what the data leave free."""
    scored = scored_rows(rows)
    rights = {error: sum(rule_strategy(r["signals"], size, error) in r["right"] for r in scored)
              for error in ERROR_GRID}
    return [error for error, right in rights.items() if right == max(rights.values())]


def load_rows(out: Path, calib: Path) -> list[dict]:
    outcomes = json.loads((out / "outcomes.json").read_text())
    outcomes.update({e["name"]: read_committed(e) for e in committed_sets(calib)})
    signals = json.loads((out / "signals.json").read_text())
    rows = []
    for name, record in outcomes.items():
        if name not in signals:
            continue
        best, right = right_answers(record["outcomes"])
        rows.append({**record, "advice": signals[name], "signals": signals[name]["signals"], "best": best,
                     "right": right})
    return rows


def print_tables(rows: list[dict]) -> None:
    print("### Outcomes\n")
    print("| set | kind | train/class | budget | " + " | ".join(CANDIDATES) + " | right answer |")
    print("|---|---|---:|---|" + "---|" * len(CANDIDATES) + "---|")
    for r in rows:
        cells = []
        for strategy in CANDIDATES:
            o = r["outcomes"].get(strategy)
            half_width = (o["interval"][1] - o["interval"][0]) * 50 if o else 0.0
            cells.append("-" if o is None else f"{o['test_accuracy']:.3f} ±{half_width:.1f}, "
                                                f"{o['seconds'] / 60:.1f} min")
        budget = r.get("budget")
        budget = budget if isinstance(budget, str) else f"{BUDGET['image_size']} px, {BUDGET['epochs']} epochs"
        print(f"| {r['name']} | {r['kind']} | {r['signals']['smallest_class']} | {budget} | {' | '.join(cells)} | "
              f"{' or '.join(sorted(r['right']))} |")

    print("\n### Signals and the rule\n")
    error = advisor.FINE_TUNE_MIN_PROBE_ERROR
    size = fit_rule(rows)
    free = free_errors(rows, size)
    print(f"fitted on all sets: fine-tune from {size} a class (at the probe error threshold {error:.2f}; every "
          f"threshold from {min(free):.2f} to {max(free):.2f} is right as often)\n")
    print("| set | ImageNet confidence | top-layer margin | probe accuracy | gain per doubling | train-CV gap | "
          "frozen expected / measured | advice (rule on all) | size threshold fitted without the family | "
          "advice, family left out | "
          "right? | points under the best |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|---|---:|")
    right_all = right_out = 0
    for r in rows:
        s = r["signals"]
        others = [o for o in rows if o["family"] != r["family"]]
        held_size = fit_rule(others)
        advice_all = rule_strategy(s, size, error)
        advice_out = rule_strategy(s, held_size, error)
        accuracy = {k: o["test_accuracy"] for k, o in r["outcomes"].items()}
        right_all += advice_all in r["right"]
        right_out += advice_out in r["right"]
        under = (max(accuracy.values()) - accuracy[advice_out]) * 100 if advice_out in accuracy else float("nan")
        frozen = advisor.frozen_strategy(s)
        expected = advisor.expected_frozen_accuracy(s, min(advisor.PROBE_PER_CLASS, r["train_per_class"] or 10**9))
        print(f"| {r['name']} | {s['imagenet_confidence']:.3f} | {s['top_layer_margin']:+.3f} | "
              f"{s['probe_accuracy']['penultimate']:.3f} | {s['probe_gain_per_doubling']:+.3f} | "
              f"{s['probe_train_cv_gap']:+.3f} | {expected:.2f} / {accuracy.get(frozen, float('nan')):.2f} | "
              f"{advice_all} | {held_size} | {advice_out} | "
              f"{'yes' if advice_out in r['right'] else 'no'} | {under:.1f} |")
    print(f"\nright with the rule fitted on all: {right_all} of {len(rows)}; with the family left out: "
          f"{right_out} of {len(rows)}")

    print("\n### Expected gains: test-accuracy points over the frozen strategy of the set's similarity, grouped by "
          "what the rule recommends (pipelines/advise.py EXPECTED_GAIN)\n")
    print("| the rule recommends | sets | " + " | ".join(CANDIDATES) + " |")
    print("|---|---:|" + "---|" * len(CANDIDATES))
    for choice in ("frozen", "frozen-layers", "lp-ft"):
        group = [r for r in rows if rule_strategy(r["signals"], size, error) == choice]
        gains = {}
        for r in group:
            base = r["outcomes"][advisor.frozen_strategy(r["signals"])]["test_accuracy"]
            for strategy, o in r["outcomes"].items():
                gains.setdefault(strategy, []).append((o["test_accuracy"] - base) * 100)
        cells = [f"{min(gains[k]):+.1f} to {max(gains[k]):+.1f} ({len(gains[k])})" if k in gains else "-"
                 for k in CANDIDATES]
        print(f"| {choice} | {len(group)} | {' | '.join(cells)} |")

    print("\n### Time here: expected by advise against measured (sets run at the budget)\n")
    print("| set | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---:|" * len(CANDIDATES))
    for r in rows:
        if isinstance(r.get("budget"), str):
            continue
        s = r["signals"]
        speeds = Speeds(extract=s["extract_images_per_second"], train=s["train_images_per_second"])
        train, test = s["train_images"], len(resolve_dataset(r["dataset"]).splits["test"])
        cells = [f"{expected_minutes(k, train, test, speeds, BUDGET['epochs']):.1f} / "
                 f"{r['outcomes'][k]['seconds'] / 60:.1f}" for k in CANDIDATES]
        print(f"| {r['name']} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("outcomes", "signals", "table"))
    parser.add_argument("calib", nargs="?", default="/tmp/calib", help="folder of bench/calibration_datasets.py")
    parser.add_argument("--only", default=None, help="comma-separated set names")
    parser.add_argument("--out", default="reports/advisor-calibration")
    parser.add_argument("--cache-dir", default="cache/calibration")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [s for s in calibration_sets(Path(args.calib)) if not args.only or s["name"] in args.only.split(",")]
    if args.phase == "outcomes":
        run_outcomes(sets, out, args.cache_dir)
    elif args.phase == "signals":
        committed = [e for e in committed_sets(Path(args.calib)) if not args.only or e["name"] in args.only.split(",")]
        run_signals(sets + committed, out, args.cache_dir)
    else:
        print_tables(load_rows(out, Path(args.calib)))


if __name__ == "__main__":
    main()
