"""Frozen-feature recipes on one dataset, each lever alone and together: backbones (ensembles), input size, `--flip`,
layers, heads. Every row is what a user runs: `python -m extract ...` for each member, then `python -m classify HEAD
ENTRY [ENTRY ...]`, through the same Python API.

    python bench/frozen_recipes.py ../shared/datasets/cifar10 --out reports/cifar10-frozen
    python bench/frozen_recipes.py ../shared/datasets/clothing --out reports/frozen-small/clothing --rows small
    python bench/frozen_recipes.py ../shared/datasets/cifar10 --limit-per-class 100 --out ... --rows small

Resumable: OUT/results.json keeps every finished row (name, command, test_accuracy, interval, extract_seconds,
head_seconds) and a rerun computes only the rows it lacks; the members' features stay in --cache-dir, so a member
shared by several rows is extracted once. `extract_seconds` is the sum of the members' own extraction times, as each
cache entry recorded it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classify.train import train_head  # noqa: E402
from extract.run import extract  # noqa: E402
from extract.store import open_cache  # noqa: E402

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
L0, L1, L2 = ({"backbone": name} for name in LITE)

# name -> members (each: backbone and extract options), head, classify options
RECIPES = {
    "lite0 svm": ([L0], "svm", {}),
    "lite0 logreg": ([L0], "logreg", {}),
    "lite1 svm": ([L1], "svm", {}),
    "lite2 svm": ([L2], "svm", {}),
    "lite0 flip svm": ([{**L0, "flip": True}], "svm", {}),
    "lite2 flip svm": ([{**L2, "flip": True}], "svm", {}),
    "lite0 260px svm": ([{**L0, "image_size": 260}], "svm", {}),
    "lite0 stage4+penultimate svm": ([{**L0, "layers": "stage4,penultimate"}], "svm",
                                     {"layer": "stage4+penultimate"}),
    "lite0+lite2 svm": ([L0, L2], "svm", {}),
    "lite0+lite1+lite2 svm": ([L0, L1, L2], "svm", {}),
    "lite0+lite1+lite2 logreg": ([L0, L1, L2], "logreg", {}),
    "lite0+lite1+lite2 flip svm": ([{**m, "flip": True} for m in (L0, L1, L2)], "svm", {}),
}
ROW_SETS = {
    "full": ["lite0 svm", "lite0 logreg", "lite1 svm", "lite2 svm", "lite0+lite2 svm", "lite0+lite1+lite2 svm",
             "lite0+lite1+lite2 logreg"],
    "small": [name for name in RECIPES if "flip" not in name or name == "lite0 flip svm"],
}


def extract_commands(members: list[dict], dataset: str, limit: int | None) -> list[str]:
    """One `python -m extract A,B DATASET [options]` per set of members extracted with the same options."""
    by_options: dict[tuple, list[str]] = {}
    for member in members:
        options = [f"--image-size {member['image_size']}"] if "image_size" in member else []
        options += ["--flip"] if member.get("flip") else []
        options += [f"--layers {member['layers']}"] if "layers" in member else []
        options += [f"--limit-per-class {limit}"] if limit else []
        by_options.setdefault(tuple(options), []).append(member["backbone"])
    return [" ".join(["python -m extract", ",".join(names), dataset, *options])
            for options, names in by_options.items()]


def run_row(name: str, dataset: str, limit: int | None, cache_dir: Path, cv: int) -> dict:
    members, head, options = RECIPES[name]
    paths, extract_seconds = [], 0.0
    for member in members:
        result = extract(member["backbone"], dataset, image_size=member.get("image_size"),
                         flip=member.get("flip", False), layers=member.get("layers", "penultimate"),
                         limit_per_class=limit, cache_dir=str(cache_dir), log=lambda message: None)
        paths.append(str(result.path))
        extract_seconds += open_cache(result.path).info.extract_seconds
    started = time.perf_counter()
    trained = train_head(paths if len(paths) > 1 else paths[0], head, cv=cv, layer=options.get("layer"),
                         log=lambda message: None)
    seconds = time.perf_counter() - started
    layer = f" --layers {options['layer'].replace('+', ',')}" if "layer" in options else ""
    entries = " ".join(Path(p).name for p in paths)
    commands = [*extract_commands(members, dataset, limit), f"python -m classify {head} {entries}{layer}"]
    return {"name": name, "command": " && ".join(commands), "test_accuracy": round(trained.test_accuracy, 4),
            "interval": [round(v, 4) for v in trained.test_accuracy_interval],
            "extract_seconds": round(extract_seconds, 1), "head_seconds": round(seconds, 1),
            "best_params": trained.best_params, "cv_accuracy": round(trained.cv_accuracy, 4),
            "feature_dim": trained.feature_dim, "n_train": trained.n_train, "n_test": trained.n_test}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit-per-class", type=int, default=None)
    parser.add_argument("--rows", default="full", help="full, small, or row names separated by ';'")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--cv", type=int, default=3)
    args = parser.parse_args()
    names = ROW_SETS.get(args.rows) or [name.strip() for name in args.rows.split(";")]
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(RECIPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {row["name"] for row in rows}
    for name in names:
        if name in done:
            continue
        row = run_row(name, args.dataset, args.limit_per_class, args.cache_dir, args.cv)
        rows.append(row)
        results_path.write_text(json.dumps(rows, indent=1) + "\n")
        print(json.dumps(row), flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    base = rows[0]["test_accuracy"] if rows else 0.0
    print(f"\n| recipe | test accuracy | 95% interval | points over {rows[0]['name'] if rows else ''} | "
          "extract s | head s | points per minute more than it |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_minutes = (rows[0]["extract_seconds"] + rows[0]["head_seconds"]) / 60 if rows else 0.0
    for row in rows:
        minutes = (row["extract_seconds"] + row["head_seconds"]) / 60
        gain = 100 * (row["test_accuracy"] - base)
        extra = minutes - base_minutes
        rate = f"{gain / extra:+.2f}" if extra > 0.05 else "-"
        low, high = row["interval"]
        print(f"| {row['name']} | {row['test_accuracy']:.4f} | {low:.3f}-{high:.3f} | {gain:+.2f} | "
              f"{row['extract_seconds']:.0f} | {row['head_seconds']:.0f} | {rate} |")


if __name__ == "__main__":
    main()
