"""python -m classify HEAD [CACHE_FILE]: train a scikit-learn head on cached features; predict new images; map
the features; find train images that look mislabelled and test images that copy train images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from classify.cluster import BACKENDS
from classify.duplicates import DEFAULT_THRESHOLD
from classify.evaluate import format_by_confidence, format_confusion
from classify.feature_map import DEFAULT_SAMPLES
from classify.heads import CALIBRATED_HEADS, DEFAULT_GRIDS, EXACT_SVM_MAX_TRAIN, HEADS, WEIGHTED_HEADS, format_grid
from extract.errors import exit_cli
from extract.options import (
    add_device_argument,
    add_json_argument,
    add_predict_batch_argument,
    add_search_arguments,
    add_skip_bad_argument,
)
from extract.store import DEFAULT_CACHE_DIR, latest_cache

EPILOG = """examples:
  python -m classify svm                          RBF SVM on the most recent cache entry
  python -m classify svm cache/A.h5 cache/B.h5    an ensemble: both entries' features side by side, matched by image
  python -m classify logreg cache/FILE.h5 --grid "C=0.01,0.1,1" --cv 5
  python -m classify linearsvm --json             one JSON object on stdout, for scripts
  python -m classify logreg --layers best         choose the layer by CV (cache from extract --layers all)
  python -m classify svm --probability            the model also gives calibrated probabilities
  python -m classify logreg --balanced            uneven classes weighted alike, chosen by balanced accuracy
  python -m classify predict cache/FILE.svm.joblib photo1.jpg photo2.png
  python -m classify map                          t-SNE picture of the newest cache's features, by class
  python -m classify suspects                     train images whose label the features disagree with
  python -m classify duplicates                   test images that are near-copies of train images
  python -m classify svm --backend dask --scheduler tcp://HOST:8786   the sweep's fits on a Dask cluster

default grids, as --grid takes them: """ + ", ".join(f'{h} "{format_grid(g)}"' for h, g in DEFAULT_GRIDS.items()) + f"""
svm is scikit-learn's RBF SVC up to {EXACT_SVM_MAX_TRAIN} training samples; above, the same model fitted one class
pair at a time on kernel matrices computed with BLAS (PairwiseSVC: 50 s instead of 10 minutes on 50,000 x 1,280
features); --exact and --pairwise force either.
The grid search uses the train split only; the test split is scored once, with the best parameters. A best
value at an end of the grid that beat its neighbour in every fold is named on stderr, with a grid to try next.
Guide: docs/classify.md.
The fitted pipeline (FILE.HEAD.joblib), its metrics and provenance (FILE.HEAD.json), the confusion
matrix (FILE.HEAD.confusion.png), every test image's prediction (FILE.HEAD.predictions.csv) and, for image
folders and tables, a picture of the wrong ones (FILE.HEAD.mistakes.png) are written beside the cache file.
"""


def add_cache_arguments(command: argparse.ArgumentParser, ensemble: bool = False) -> None:
    """The cache a command reads: a file, a folder's newest, or --cache-dir's newest; with `ensemble`, several
    files of the same images, read side by side."""
    if ensemble:
        command.add_argument("cache_file", nargs="*", metavar="CACHE_FILE",
                             help="HDF5 cache entry, or a folder of them for the newest there (default: the newest "
                                  "in --cache-dir); several entries of the same images are an ensemble: their "
                                  "features side by side, matched by image")
    else:
        command.add_argument("cache_file", nargs="?", help="HDF5 cache entry, or a folder of them for the newest "
                                                           "there (default: the newest in --cache-dir)")
    command.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                         help="where extract wrote the feature files (default: cache/)")


def add_layers_argument(command: argparse.ArgumentParser, help_text: str) -> None:
    """--layers as extract spells it (commas between layers); --layer with '+', its old spelling, still read."""
    command.add_argument("--layers", dest="layer", default=None, help=help_text)
    command.add_argument("--layer", dest="old_layer", default=None, help=argparse.SUPPRESS)


def chosen_layers(args: argparse.Namespace) -> str | None:
    """The layers asked for, joined by '+' as the heads' LayerSelector reads them."""
    if args.old_layer is not None:
        print("note: --layer is now --layers, with commas between layers as extract takes them; --layer goes in the "
              "next release", file=sys.stderr)
    text = args.layer if args.layer is not None else args.old_layer
    return None if text is None else "+".join(part.strip() for part in text.replace("+", ",").split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classify", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{" + ",".join(HEADS) + ",predict,map,suspects,duplicates}")
    for head in HEADS:
        sub = commands.add_parser(head, help=f"train a {head} head by GridSearchCV and test it")
        add_cache_arguments(sub, ensemble=True)
        sub.add_argument("--grid", default=None,
                         help=f"parameters to search, e.g. \"C=0.1,1,10\" (default {DEFAULT_GRIDS[head]}); "
                              "several separated by ';'")
        add_layers_argument(sub, "which cached layers to train on (default: penultimate): a name such as stage3, "
                                 "several separated by commas (each scaled to equal variance), or 'best' to choose by "
                                 "cross-validation on the train split among every cached layer (extract them with "
                                 "--layers all); of an ensemble, the same layers of every member")
        add_search_arguments(sub, "parallel fits (default -1: all cores, or all threads of the Dask cluster)")
        sub.add_argument("--backend", default="local", choices=BACKENDS,
                         help="where the GridSearchCV fits run: local (default) or dask (needs --scheduler)")
        sub.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786; its workers need "
                              "this toolkit installed")
        add_json_argument(sub)
        sub.add_argument("--seed", type=int, default=0, help="shuffles the cross-validation folds (default 0)")
        if head in CALIBRATED_HEADS:
            sub.add_argument("--probability", action="store_true",
                             help="give the model probabilities, for `predict` to print, learned from the best "
                                  "parameters' out-of-fold decision values on the train split (--cv more fits; "
                                  "svm: libsvm's pairwise coupling, linearsvm: a fitted temperature); the model "
                                  "then predicts its most probable class")
        if head in WEIGHTED_HEADS:
            sub.add_argument("--balanced", action="store_true",
                             help="weight each class by the inverse of its train image count and choose parameters "
                                  "by balanced accuracy (the mean of the classes' recalls): for uneven classes, when "
                                  "the small ones matter as much as the large")
        if head == "svm":
            sub.add_argument("--exact", action="store_true",
                             help="always fit scikit-learn's SVC (slow above ~10,000 training samples)")
            sub.add_argument("--pairwise", action="store_true",
                             help="always fit PairwiseSVC (the same model; it needs the kernel of the two largest "
                                  "classes in memory: (n_a + n_b)^2 x 8 bytes)")
    predict = commands.add_parser("predict", help="classify image files with a saved head",
                                  description="Prints PATH<TAB>CLASS<TAB>PROBABILITY per image, in order; the "
                                              "probability (of the predicted class) only for heads that give one: "
                                              "logreg, knn, and the SVMs trained with --probability.")
    predict.add_argument("model_file", help="a .joblib written by a training command")
    predict.add_argument("images", nargs="+", help="image files, or folders (every image under them)")
    add_device_argument(predict)
    add_predict_batch_argument(predict)
    add_json_argument(predict)
    predict.add_argument("--min-probability", type=float, default=None, metavar="P",
                         help="print 'unsure' instead of the class where its probability is below P, for a person to "
                              "look at (the table printed when the head was trained says how many test images pass "
                              "each P and how many of those are right)")
    add_skip_bad_argument(predict)
    feature_map = commands.add_parser("map", help="draw a cache's train features in 2-D by t-SNE, coloured by class",
                                      description="Writes FILE.map.png beside the cache: do the backbone's features "
                                                  "already group the classes, and which ones mingle?")
    add_cache_arguments(feature_map)
    add_json_argument(feature_map)
    add_layers_argument(feature_map, "which cached layers to draw, separated by commas (default: penultimate)")
    feature_map.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                             help=f"train images to draw, picked at random (default {DEFAULT_SAMPLES}: about 10 s)")
    feature_map.add_argument("--seed", type=int, default=0,
                             help="which images are drawn, and the t-SNE layout (default 0)")
    suspects = commands.add_parser(
        "suspects", help="rank train images by how much the features disagree with their labels",
        description="Predicts every train image by a logistic regression trained on the other cross-validation "
                    "folds; an image predicted as another class than its label is a suspect. Suspects are ranked "
                    "by the probability their label got, least first: the likeliest labelling mistakes. Writes "
                    "FILE.suspects.csv (every suspect) and, for image folders and tables, FILE.suspects.png (the "
                    "first 30).")
    add_cache_arguments(suspects)
    add_json_argument(suspects)
    add_layers_argument(suspects, "which cached layers to use, separated by commas (default: penultimate)")
    add_search_arguments(suspects)
    suspects.add_argument("--seed", type=int, default=0, help="shuffles the cross-validation folds (default 0)")
    duplicates = commands.add_parser(
        "duplicates", help="find test images that are near-copies of train images",
        description="For each test image, the train image whose features are most similar (cosine); a test image "
                    "at or above --threshold is listed as a near-copy: the head has as good as seen it, and the test "
                    "accuracy counts it as unseen. Writes FILE.duplicates.csv and, for image folders and tables, "
                    "FILE.duplicates.png (the most similar pairs side by side).")
    add_cache_arguments(duplicates)
    add_json_argument(duplicates)
    duplicates.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                            help=f"cosine similarity from which a pair counts (default {DEFAULT_THRESHOLD})")
    add_layers_argument(duplicates, "which cached layers to compare, separated by commas (default: penultimate)")
    return parser


SHOWN_ROWS = 10  # of the suspects and duplicates printed; the CSV has them all


def print_duplicates(found) -> None:
    share = len(found.test_rows) / max(len(found.test_ids), 1)
    print(f"\n{len(found.test_rows)} of {len(found.test_ids)} test images ({share:.1%}) have a train image at cosine "
          f"similarity {found.threshold:g} or more ({found.seconds:.1f} s)" + (":" if len(found.test_rows) else "."))
    for row in found.test_rows[:SHOWN_ROWS]:
        print(f"  {found.test_ids[row]}\t{found.train_ids[found.nearest[row]]}\t{found.similarity[row]:.3f}")
    for head, (every, these, others) in found.accuracy_apart.items() if len(found.test_rows) else ():
        print(f"{head} (its predictions.csv): test accuracy {every:.4f}, on these {these:.4f}, on the other "
              f"{len(found.test_ids) - len(found.test_rows)} {others:.4f}")
    if len(found.test_rows):
        print("the test accuracy counts them as unseen: move them out of the test split and extract again (only "
              "the moved files go through the network)")
    print(f"\nevery pair, most similar first: {found.csv_path}")
    if found.png_path:
        print(f"the first pairs pictured: {found.png_path}")


def duplicates_json(found) -> dict:
    return {"threshold": found.threshold, "test_images": len(found.test_ids),
            "near_copies": [{"test_id": str(found.test_ids[row]), "train_id": str(found.train_ids[found.nearest[row]]),
                             "similarity": float(found.similarity[row])} for row in found.test_rows],
            "accuracy_apart": {head: dict(zip(("all", "near_copies", "others"), values, strict=True))
                               for head, values in found.accuracy_apart.items()},
            "seconds": found.seconds, "csv": str(found.csv_path), "png": found.png_path and str(found.png_path)}


def suspects_json(found) -> dict:
    names = found.class_names
    return {"train_images": len(found.labels), "best_params": found.best_params, "seconds": found.seconds,
            "suspects": [{"id": str(found.ids[row]), "label": names[found.labels[row]],
                          "predicted": names[found.predicted[row]],
                          "probability_of_label": float(found.probabilities[row, found.labels[row]]),
                          "probability_of_predicted": float(found.probabilities[row, found.predicted[row]])}
                         for row in found.rows],
            "csv": str(found.csv_path), "png": found.png_path and str(found.png_path)}


def print_suspects(found) -> None:
    share = len(found.rows) / max(len(found.labels), 1)
    print(f"\n{len(found.rows)} of {len(found.labels)} train images ({share:.1%}) are predicted as another class "
          f"than their label by a logreg head that did not see them ({found.best_params}, {found.seconds:.1f} s); "
          f"the {min(SHOWN_ROWS, len(found.rows))} it disagrees with most:")
    for row in found.rows[:SHOWN_ROWS]:
        label, predicted = found.labels[row], found.predicted[row]
        print(f"  {found.ids[row]}\tlabelled {found.class_names[label]} ({found.probabilities[row, label]:.3f}), "
              f"looks like {found.class_names[predicted]} ({found.probabilities[row, predicted]:.3f})")
    print(f"\nevery suspect, most suspect first: {found.csv_path}")
    if found.png_path:
        print(f"the first ones pictured: {found.png_path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        from classify.predict import predict_images, print_predictions
        from extract.runtime import keep_freed_memory

        keep_freed_memory()  # a process-wide setting: the CLI's to make, not the library's

        print_predictions(predict_images(args.model_file, args.images, device=args.device, batch_size=args.batch_size,
                                         skip_bad=args.skip_bad, min_probability=args.min_probability, progress=True,
                                         log=lambda message: print(message, file=sys.stderr), workers=args.workers),
                          args.min_probability, args.json)
        return 0

    args.layer = chosen_layers(args)
    cache_file = args.cache_file
    if isinstance(cache_file, list):  # the heads take several entries: an ensemble
        cache_file = cache_file if len(cache_file) > 1 else (cache_file[0] if cache_file else None)
    if cache_file is None or (isinstance(cache_file, str) and Path(cache_file).is_dir()):
        cache_file = latest_cache(cache_file or args.cache_dir)
        print(f"using the most recent cache: {cache_file}", file=sys.stderr)
    if args.command == "duplicates":
        from classify.duplicates import find_duplicates

        found = find_duplicates(cache_file, args.threshold, args.layer,
                                log=lambda message: print(message, file=sys.stderr))
        if args.json:
            print(json.dumps(duplicates_json(found)))
        else:
            print_duplicates(found)
        return 0
    if args.command == "suspects":
        from classify.suspects import find_suspects

        found = find_suspects(cache_file, args.layer, args.cv, args.n_jobs,
                              log=lambda message: print(message, file=sys.stderr), progress=True, seed=args.seed)
        if args.json:
            print(json.dumps(suspects_json(found)))
        else:
            print_suspects(found)
        return 0
    if args.command == "map":
        from classify.feature_map import feature_map

        png = feature_map(cache_file, args.layer, args.samples, log=lambda message: print(message, file=sys.stderr),
                          seed=args.seed)
        print(json.dumps({"map_png": str(png)}) if args.json else png)
        return 0

    from classify.train import train_head

    result = train_head(cache_file, args.command, args.grid, args.cv, args.n_jobs, exact=getattr(args, "exact", False),
                        pairwise=getattr(args, "pairwise", False), layer=args.layer, backend=args.backend,
                        scheduler=args.scheduler, probability=getattr(args, "probability", False),
                        balanced=getattr(args, "balanced", False), seed=args.seed, progress=True,
                        log=lambda message: print(message, file=sys.stderr))
    if args.json:
        skip = ("report", "confusion", "class_names")
        print(json.dumps({k: v for k, v in result.to_dict().items() if k not in skip}))
        return 0
    scoring = result.scoring.replace("_", " ")
    print(f"\n{result.head}: best {result.best_params} (cv {scoring} {result.cv_accuracy:.4f}), "
          f"search {result.search_seconds:.1f} s")
    for entry in result.cv_scores:
        print(f"  {entry['params']}: cv {scoring} {entry['mean_cv_accuracy']:.4f}")
    if len(result.layer_scores) > 1:
        print(f"best cv {scoring} per layer: " + ", ".join(f"{name} {score:.4f}"
                                                         for name, score in result.layer_scores.items()))
    low, high = result.test_accuracy_interval
    test_counts = np.asarray(result.confusion).sum(axis=1)
    uneven = test_counts.max() > test_counts[test_counts > 0].min()  # else balanced accuracy is the accuracy
    print(f"\ntest accuracy {result.test_accuracy:.4f} (95% interval {low:.3f}-{high:.3f})   "
          + (f"balanced accuracy {result.test_balanced_accuracy:.4f}   " if uneven or result.scoring != "accuracy"
             else "")
          + f"macro-F1 {result.macro_f1:.4f}   "
          f"({result.n_test} test images, {result.n_train} train, {result.feature_dim} {result.layer} features"
          + (f" of {len(result.members)} cache entries side by side)" if len(result.members) > 1 else ")"))
    if result.test_log_loss is not None:
        print(f"probabilities: test log loss {result.test_log_loss:.4f}, calibration error "
              f"{result.test_calibration_error:.4f} (0: the predicted class is right as often as its probability says)")
        print(format_by_confidence(result.test_by_confidence))
    print()
    print(result.report)
    print(format_confusion(np.asarray(result.confusion), result.class_names))
    print(f"\nmodel: {result.model_file}\nconfusion matrix: {result.confusion_png}\n"
          f"test predictions: {result.predictions_csv} ({result.n_wrong} of {result.n_test} wrong)")
    if result.mistakes_png:
        print(f"wrong test images: {result.mistakes_png}")
    return 0


if __name__ == "__main__":
    exit_cli(main)
