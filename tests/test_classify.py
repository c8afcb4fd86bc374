import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run

from classify.__main__ import main
from classify.heads import DEFAULT_GRIDS, build_head, format_grid, parse_grid
from classify.models import load_model
from extract.errors import UsageError
from extract.store import open_cache


@pytest.fixture(scope="module")
def cache_copy(lite_cache, tmp_path_factory):
    """The session cache in a folder of its own, so models written here do not leak into other tests."""
    folder = tmp_path_factory.mktemp("classify")
    return shutil.copy(lite_cache, folder / lite_cache.name)


@pytest.fixture(scope="module")
def trained(cache_copy):
    from classify.train import train_head

    return train_head(cache_copy, "logreg", "C=0.01,1", cv=2, n_jobs=1, log=lambda m: None)


def test_grid_search_beats_chance(trained):
    assert trained.best_params["C"] in (0.01, 1) and len(trained.cv_scores) == 2
    # 10 classes, 6 images each at 96 px: real features score well above chance (0.1); broken ones do not.
    assert trained.test_accuracy > 0.3


def test_the_search_sees_every_train_row_and_no_test_row(cache_copy, monkeypatch, tmp_path):
    from sklearn.model_selection import GridSearchCV

    from classify.train import train_head

    cache_copy = shutil.copy(cache_copy, tmp_path / cache_copy.name)  # its model file is its own

    searched = []
    fit = GridSearchCV.fit
    monkeypatch.setattr(GridSearchCV, "fit", lambda self, X, y=None, **kw: searched.append(X.copy()) or fit(
        self, X, y, **kw))
    train_head(cache_copy, "logreg", "C=0.01", cv=2, n_jobs=1, log=lambda m: None)
    rows = {row.tobytes() for row in searched[0]}
    x_train, x_test = open_cache(cache_copy).load("train")[0], open_cache(cache_copy).load("test")[0]
    assert rows == {row.tobytes() for row in x_train}
    assert not rows & {row.tobytes() for row in x_test}


def test_saved_model_predicts_exactly_as_evaluated(trained, cache_copy):
    model, metadata = load_model(trained.model_file)
    features, labels, _ = open_cache(cache_copy).load("test")
    accuracy = float(np.mean(model.predict(features) == labels))
    assert accuracy == pytest.approx(trained.test_accuracy)
    assert metadata["provenance"]["backbone"] == "efficientnet_lite0"
    assert metadata["best_params"] == trained.best_params


def test_predict_new_images_uses_the_recorded_backbone(trained, cache_copy, sample_dir, capsys):
    features, _, ids = open_cache(cache_copy).load("test")
    model, metadata = load_model(trained.model_file)
    picked = [3, 25, 48]
    expected = [metadata["class_names"][int(i)] for i in model.predict(features[picked])]
    code, out, _ = run(main, ["predict", trained.model_file, *[str(sample_dir / ids[i]) for i in picked]], capsys)
    assert code == 0
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [label for _, label, _ in lines] == expected
    # logreg gives probabilities: the third column is the one of the predicted class
    probabilities = model.predict_proba(features[picked])
    columns = [metadata["class_names"].index(label) for label in expected]
    assert [float(p) for _, _, p in lines] == pytest.approx(probabilities[range(3), columns], abs=5e-4)
    # --json: one object per image, in order, the probability unrounded
    code, out, _ = run(main, ["predict", trained.model_file, *[str(sample_dir / ids[i]) for i in picked], "--json"],
                       capsys)
    objects = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 0 and [o["label"] for o in objects] == expected and not any(o["unsure"] for o in objects)
    assert [o["path"] for o in objects] == [str(sample_dir / ids[i]) for i in picked]
    assert [o["probability"] for o in objects] == pytest.approx(probabilities[range(3), columns], abs=1e-5)


def test_predict_marks_unsure_the_images_below_min_probability(trained, cache_copy, sample_dir, capsys):
    features, _, ids = open_cache(cache_copy).load("test")
    model, metadata = load_model(trained.model_file)
    picked = list(range(8))
    probability = model.predict_proba(features[picked]).max(axis=1)
    threshold = float(np.median(probability))
    paths = [str(sample_dir / ids[i]) for i in picked]
    code, out, err = run(main, ["predict", trained.model_file, *paths, "--min-probability", f"{threshold}"], capsys)
    assert code == 0
    lines = [line.split("\t") for line in out.strip().splitlines()]
    expected = ["unsure" if p < threshold else metadata["class_names"][int(label)]
                for p, label in zip(probability, model.predict(features[picked]), strict=True)]
    assert [label for _, label, _ in lines] == expected and 0 < expected.count("unsure") < 8
    assert f"{expected.count('unsure')} of 8 images below probability {threshold:g}: printed as unsure" in err
    for value, message in (("0", "must be above 0 and at most 1, not 0"), ("1.5", "not 1.5")):
        code, out, err = run(main, ["predict", trained.model_file, paths[0], "--min-probability", value], capsys)
        assert code == 2 and message in err and err.count("\n") == 1 and out == ""


def test_predict_prints_no_probability_for_an_svm(cache_copy, sample_dir, capsys):
    from classify.train import train_head

    svm = train_head(cache_copy, "linearsvm", "C=0.001", cv=2, n_jobs=1, log=lambda m: None)
    features, _, ids = open_cache(cache_copy).load("test")
    model, metadata = load_model(svm.model_file)
    expected = [f"{sample_dir / ids[i]}\t{metadata['class_names'][int(label)]}"
                for i, label in zip((0, 1), model.predict(features[:2]), strict=True)]
    code, out, _ = run(main, ["predict", svm.model_file, *(str(sample_dir / ids[i]) for i in (0, 1))], capsys)
    assert code == 0 and out.strip().splitlines() == expected
    code, out, err = run(main, ["predict", svm.model_file, str(sample_dir / ids[0]), "--min-probability", "0.9"],
                         capsys)
    assert code == 2 and "--min-probability needs probabilities, which" in err and "--probability" in err


@pytest.mark.parametrize("head, grid", [("svm", "C=10"), ("linearsvm", "C=0.001")])
def test_an_svm_trained_with_probability_predicts_its_most_probable_class_and_prints_it(head, grid, cache_copy,
                                                                                        sample_dir, capsys):
    code, out, err = run(main, [head, str(cache_copy), "--grid", grid, "--cv", "2", "--n-jobs", "1", "--probability",
                                "--json"], capsys)
    assert code == 0 and "probabilities learned from the best parameters' out-of-fold decision values" in err, err
    result = json.loads(out)
    model, metadata = load_model(result["model_file"])
    features, labels, ids = open_cache(cache_copy).load("test")
    probabilities = model.predict_proba(features)
    assert np.allclose(probabilities.sum(axis=1), 1) and probabilities.min() >= 0
    assert np.array_equal(model.predict(features), probabilities.argmax(axis=1))
    assert np.mean(model.predict(features) == labels) == pytest.approx(result["test_accuracy"])
    written = [line.split(",")[2] for line in Path(result["predictions_csv"]).read_text().splitlines()[1:]]
    assert written == [metadata["class_names"][i] for i in model.predict(features)]
    code, out, _ = run(main, ["predict", result["model_file"], *(str(sample_dir / ids[i]) for i in (0, 1))], capsys)
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert [label for _, label, _ in lines] == [metadata["class_names"][i] for i in probabilities[:2].argmax(axis=1)]
    assert [float(p) for _, _, p in lines] == pytest.approx(probabilities[:2].max(axis=1), abs=5e-4)


@pytest.mark.parametrize("option, head, message", [
    ("probability", "logreg", "--probability calibrates the SVMs .*logreg gives probabilities of its own"),
    ("balanced", "knn", "--balanced weights the classes of svm, linearsvm, logreg; knn has no class"),
])
def test_an_option_for_other_heads_is_refused(option, head, message, cache_copy, capsys):
    """From Python a one-line UsageError; on the command line knn does not have the option at all."""
    from classify.train import train_head

    with pytest.raises(UsageError, match=message):
        train_head(cache_copy, head, **{option: True}, log=lambda m: None)
    with pytest.raises(SystemExit) as exit_status:
        main(["knn", str(cache_copy), f"--{option}"])
    assert exit_status.value.code == 2 and f"unrecognized arguments: --{option}" in capsys.readouterr().err


def test_predict_takes_folders_and_checks_every_path_first(trained, cache_copy, sample_dir, tmp_path, capsys):
    features, _, ids = open_cache(cache_copy).load("test")
    model, metadata = load_model(trained.model_file)
    cats = [i for i, sample in enumerate(ids) if sample.startswith("test/cat/")]
    expected = [metadata["class_names"][int(i)] for i in model.predict(features[cats])]
    code, out, _ = run(main, ["predict", trained.model_file, str(sample_dir / "test" / "cat")], capsys)
    assert code == 0
    lines = [line.split("\t") for line in out.strip().splitlines()]  # every cat in the folder; the cache has a few
    assert len(lines) == 10 and [path for path, *_ in lines[:len(cats)]] == [str(sample_dir / ids[i]) for i in cats]
    assert [label for _, label, _ in lines[:len(cats)]] == expected

    (tmp_path / "empty").mkdir()
    for paths, message in (([str(tmp_path / "empty")], "holds no images"), (["no/such.jpg"], "does not exist")):
        code, out, err = run(main, ["predict", trained.model_file, str(sample_dir / "test" / "cat"), *paths], capsys)
        assert code == 2 and message in err and out == "", err


def test_predict_stops_at_an_unreadable_image_or_skips_it(trained, sample_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(sample_dir / "test" / "cat", folder)
    good = sorted(str(path) for path in folder.glob("*.jpg"))
    (folder / "0003.jpg").write_bytes(b"not a jpeg")
    code, out, err = run(main, ["predict", trained.model_file, str(folder)], capsys)
    assert code == 2 and "cannot read image" in err and "0003.jpg" in err and "--skip-bad" in err
    code, out, err = run(main, ["predict", trained.model_file, str(folder), "--skip-bad"], capsys)
    assert code == 0 and "skipped unreadable: " in err and "0003.jpg" in err
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [p for p in good if "0003" not in p]
    # decoded by threads, a batch ahead, in batches that split the folder: the same lines, in the same order
    code, threaded, err = run(main, ["predict", trained.model_file, str(folder), "--skip-bad", "--workers", "2",
                                     "--batch-size", "3"], capsys)
    assert code == 0 and threaded == out and "0003.jpg" in err
    code, _, err = run(main, ["predict", trained.model_file, str(folder), "--workers", "2", "--batch-size", "3"],
                       capsys)
    assert code == 2 and "cannot read image" in err and "0003.jpg" in err


def test_cli_json_and_plot(cache_copy, capsys):
    code, out, err = run(main, ["svm", str(cache_copy), "--grid", "C=1,10", "--cv", "2", "--n-jobs", "1", "--json"],
                         capsys)
    assert code == 0
    result = json.loads(out)  # stdout is the JSON alone; the search's progress went to stderr
    assert "/4 [" in err and "fit/s" in err  # the bar over the 4 fits went to stderr
    assert {"test_accuracy", "macro_f1", "best_params", "cache_file"} <= set(result)
    assert result["cache_file"] == str(cache_copy) and "SVC" in result["estimator"]
    from pathlib import Path

    png = Path(result["confusion_png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_file_the_newest_cache_is_used(cache_copy, capsys):
    code, out, err = run(main, ["linearsvm", "--cache-dir", str(cache_copy.parent), "--cv", "2", "--n-jobs", "1"],
                         capsys)
    assert code == 0 and f"using the most recent cache: {cache_copy}" in err and "test accuracy" in out


def test_tampered_model_is_refused(trained, tmp_path):
    model = tmp_path / "m.joblib"
    shutil.copy(trained.model_file, model)
    shutil.copy(trained.model_file.replace(".joblib", ".json"), tmp_path / "m.json")
    with open(model, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UsageError, match="refusing to load"):
        load_model(model)


@pytest.mark.parametrize("argv, message", [
    (["svm", "--grid", "C"], "does not parse"),
    (["svm", "--grid", "Cee=1,2"], "svm has no parameter Cee"),
    (["logreg", "--cv", "7"], "--cv 7 is more than the 6 training images"),
    (["svm", "no-such.h5"], "does not exist"),
    (["logreg", "--n-jobs", "0"], "--n-jobs must not be 0"),
    (["linearsvm", "--grid", "C=-1"], "--grid 'C=-1' does not suit linearsvm: C must be a positive number"),
    (["linearsvm", "--grid", "C=abc"], "C must be a positive number, not 'abc'"),
    (["logreg", "--grid", "C=-1"], "does not suit logreg: The 'C' parameter of LogisticRegression"),
    (["knn", "--grid", "n_neighbors=41"], "n_neighbors=41: the smallest of the 3 cross-validation splits trains on 40 "
                                          "images; use 40 or fewer neighbours"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, cache_copy, capsys):
    if argv[1:2] != ["no-such.h5"]:
        argv = [argv[0], str(cache_copy), *argv[1:]]
    code, _, err = run(main, argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_folder_given_as_cache_file_means_its_newest_cache(cache_copy, capsys):
    code, out, err = run(main, ["logreg", str(cache_copy.parent), "--cv", "2", "--n-jobs", "1", "--json"], capsys)
    assert code == 0 and f"using the most recent cache: {cache_copy}" in err, err
    assert json.loads(out)["cache_file"] == str(cache_copy)


@pytest.mark.parametrize("mistake, message", [
    ("cache file", "is not a saved head; give the FILE.HEAD.joblib"),
    ("missing model", "does not exist; train one"),
    ("model without sidecar", "has lost its m.json"),
])
def test_model_file_mistakes_are_named(mistake, message, cache_copy, trained, tmp_path, capsys):
    model = cache_copy if mistake == "cache file" else tmp_path / "m.joblib"
    if mistake == "model without sidecar":
        shutil.copy(trained.model_file, model)
    code, out, err = run(main, ["predict", str(model), "x.jpg"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and out == "", err


def test_an_unknown_head_from_python_is_named(cache_copy):
    from classify.train import train_head

    with pytest.raises(UsageError, match="unknown head 'svc'; choose one of svm, linearsvm, logreg, knn"):
        train_head(cache_copy, "svc")


def test_empty_cache_dir_says_what_to_run(tmp_path, capsys):
    code, _, err = run(main, ["svm", "--cache-dir", str(tmp_path)], capsys)
    assert code == 2 and "python -m extract" in err


def test_grid_values_are_typed():
    assert parse_grid("C=1,0.5;gamma=scale", "svm") == {"clf__C": [1, 0.5], "clf__gamma": ["scale"]}
    assert build_head("svm").named_steps["clf"].kernel == "rbf"
    assert format_grid({"C": [1.0, 0.0003], "gamma": ["scale"]}) == "C=1,0.0003; gamma=scale"
    for head, grid in DEFAULT_GRIDS.items():  # what --help and the grid-end note print, --grid reads back
        assert parse_grid(format_grid(grid), head) == parse_grid(None, head)


@pytest.mark.parametrize("limit, flags, expect_pairwise", [
    (10_000, [], False),        # small data: scikit-learn's SVC
    (10_000, ["--pairwise"], True),
    (40, [], True),             # "large" data (above a lowered threshold): PairwiseSVC
    (40, ["--exact"], False),
])
def test_svm_path_follows_data_size_and_flags(limit, flags, expect_pairwise, cache_copy, capsys, monkeypatch):
    import classify.heads

    monkeypatch.setattr(classify.heads, "EXACT_SVM_MAX_TRAIN", limit)
    code, out, err = run(main, ["svm", str(cache_copy), "--cv", "2", "--n-jobs", "1", "--json", *flags], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["estimator"].startswith("PairwiseSVC(" if expect_pairwise else "SVC(")
    assert ("one class pair at a time" in err) == expect_pairwise
    assert ("above the 40" in err) == (expect_pairwise and not flags)
    model, _ = load_model(result["model_file"])
    reported = " -> ".join(repr(step) for name, step in model.steps if name != "layer")
    assert reported == result["estimator"]  # what is reported is what was saved
    features, labels, _ = open_cache(cache_copy).load("test")
    assert float(np.mean(model.predict(features) == labels)) == pytest.approx(result["test_accuracy"])


def test_knn_votes_the_nearest_train_images_by_cosine_similarity(cache_copy):
    """No training: each test image takes the labels of its k most similar train images, closer ones weighing more."""
    from classify.train import train_head

    result = train_head(cache_copy, "knn", "n_neighbors=1", cv=2, n_jobs=1, log=lambda m: None)
    assert result.test_accuracy > 0.3
    cache = open_cache(cache_copy)
    (x_train, y_train, _), (x_test, _, _) = cache.load("train"), cache.load("test")
    unit_train, unit_test = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (x_train, x_test))
    similarity = unit_test @ unit_train.T
    np.testing.assert_array_equal(load_model(result.model_file)[0].predict(x_test), y_train[similarity.argmax(1)])
    three = build_head("knn").set_params(clf__n_neighbors=3).fit(x_train, y_train)
    nearest = np.argsort(-similarity, axis=1)[:, :3]
    distance = np.sqrt(np.maximum(2 - 2 * np.take_along_axis(similarity, nearest, 1), 1e-12))
    votes = np.zeros((len(x_test), len(cache.class_names)))
    np.add.at(votes, (np.arange(len(x_test))[:, None], y_train[nearest]), 1 / distance)
    np.testing.assert_array_equal(three.predict(x_test), votes.argmax(1))


def test_the_test_accuracy_comes_with_its_95_percent_wilson_interval(trained, cache_copy, capsys):
    from classify.evaluate import accuracy_interval

    low, high = accuracy_interval(66, 100)
    assert (round(low, 4), round(high, 4)) == (0.5628, 0.7454)  # the textbook Wilson interval of 66 in 100
    assert accuracy_interval(0, 10)[0] == 0.0 and accuracy_interval(10, 10)[1] == 1.0
    assert accuracy_interval(660, 1000)[1] - accuracy_interval(660, 1000)[0] < high - low  # more images, narrower
    low, high = trained.test_accuracy_interval
    assert low < trained.test_accuracy < high
    code, out, _ = run(main, ["logreg", str(cache_copy), "--grid", "C=0.01", "--cv", "2", "--json"], capsys)
    interval = json.loads(out)["test_accuracy_interval"]
    assert code == 0 and interval == list(accuracy_interval(round(json.loads(out)["test_accuracy"] * 60), 60))


def test_many_classes_print_their_most_confused_pairs_instead_of_a_matrix_too_wide_to_read():
    from classify.evaluate import format_confusion

    names = [f"class{i}" for i in range(25)]
    confusion = np.diag(np.full(25, 8))
    confusion[3, 7], confusion[12, 0], confusion[20, 21] = 2, 5, 2
    text = format_confusion(confusion, names, pairs=2)
    assert text.splitlines() == [
        "most confused of 25 classes (true -> predicted: test images, share of the true class)",
        "  class12 -> class0: 5 (38%)",
        "  class3 -> class7: 2 (20%)",  # ties in the classes' order
    ]
    assert "every test image is right" in format_confusion(np.diag(np.full(25, 8)), names)
    few = format_confusion(confusion[:10, :10], names[:10])
    assert len(few.splitlines()) == 12  # a title, the column names, a row per class
    assert few.splitlines()[5].split() == ["class3", "0", "0", "0", "8", "0", "0", "0", "2", "0", "0"]


def test_training_on_a_cache_never_imports_torch(cache_copy, tmp_path):
    """The frozen path's point: after extraction, heads train on the cache alone. Importing torch and torchvision
    took 3 of the 4.4 s `python -m classify` needed before it read a byte."""
    script = ("import sys; from classify.__main__ import main; code = main(sys.argv[1:]); "
              "print(code, sorted(name for name in ('torch', 'torchvision', 'timm') if name in sys.modules))")
    cache = shutil.copy(cache_copy, tmp_path / cache_copy.name)
    result = subprocess.run([sys.executable, "-c", script, "logreg", str(cache), "--grid", "C=0.01", "--cv", "2",
                             "--n-jobs", "1"], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr[-2000:]


def _search_results(name: str, values: list, fold_scores: list[list[float]], **fixed) -> tuple[dict, dict, int]:
    """A grid over one parameter (others fixed) and GridSearchCV's cv_results_ for it: fold_scores[fold][value]."""
    grid = {f"clf__{name}": values, **{f"clf__{k}": [v] for k, v in fixed.items()}}
    params = [{f"clf__{name}": v, **{f"clf__{k}": w for k, w in fixed.items()}} for v in values]
    results = {"params": params, **{f"split{i}_test_score": np.array(s) for i, s in enumerate(fold_scores)}}
    return grid, results, int(np.argmax(np.mean(fold_scores, axis=0)))


def test_a_best_value_at_the_end_of_the_grid_is_reported_with_a_grid_that_goes_beyond(cache_copy, capsys,
                                                                                       monkeypatch):
    from classify.train import grid_edge_note

    def note(*args, **fixed):
        return grid_edge_note(*_search_results(*args, **fixed))

    assert note("C", [0.001, 0.01, 0.1], [[0.7, 0.8, 0.6], [0.7, 0.8, 0.6]]) is None  # inside: the grid brackets it
    assert note("C", [0.0001, 0.0003, 0.001], [[0.8, 0.7, 0.6], [0.8, 0.7, 0.6]]).endswith(
        'smallest value of the grid and beat C=0.0003 in every fold, so a value beyond it may score higher: try '
        '--grid "C=1e-05,3e-05,0.0001"')
    assert note("C", [0.0001, 0.0003, 0.001], [[0.8, 0.7, 0.6], [0.69, 0.7, 0.6]]) is None  # one fold disagrees
    assert note("C", [1.0, 10.0], [[0.7, 0.7], [0.7, 0.7]]) is None  # a plateau: C=1 is best only by the tie rule
    with_gamma = note("C", [1.0, 10.0], [[0.6, 0.7], [0.6, 0.7]], gamma="scale")
    assert with_gamma.endswith('--grid "C=10,100,1000; gamma=scale"')
    assert note("n_neighbors", [5, 10, 20], [[0.5, 0.6, 0.7]]).endswith('"n_neighbors=20,40,80"')
    assert note("n_neighbors", [1, 2], [[0.7, 0.6]]) is None  # nothing lies below 1
    # the command passes the search's own results and prints the note on stderr, --json or not
    seen = []
    monkeypatch.setattr("classify.train.grid_edge_note", lambda *args: seen.append(args) or "note: from the search")
    code, out, err = run(main, ["logreg", str(cache_copy), "--grid", "C=0.0000001,0.01", "--cv", "2", "--json"], capsys)
    grid, results, best = seen[0]
    assert code == 0 and "note: from the search" in err and json.loads(out)["best_params"] == {
        "C": results["params"][best]["clf__C"]} and grid == {"clf__C": [1e-07, 0.01]} and "split1_test_score" in results


def test_the_feature_map_keeps_separate_classes_apart():
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from classify.feature_map import embed

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 64)) + 6 * np.eye(3, 64)[labels]  # three blobs, 6 sd apart
    coords = embed(features)
    assert coords.shape == (120, 2) and np.array_equal(coords, embed(features))  # the same map on every run
    assert cross_val_score(KNeighborsClassifier(1), coords, labels, cv=5).mean() == 1.0
    assert cross_val_score(KNeighborsClassifier(1), embed(rng.normal(size=(120, 64))), labels, cv=5).mean() < 0.6


def test_map_draws_a_cache_beside_it(cache_copy, capsys):
    from PIL import Image

    code, out, err = run(main, ["map", str(cache_copy), "--samples", "40"], capsys)
    assert code == 0 and "t-SNE of 40 train images x 1280 penultimate features" in err, err
    path = out.strip()
    assert path == str(cache_copy.with_suffix(".map.png"))
    assert Image.open(path).size[0] > 500
    code, out, _ = run(main, ["map", str(cache_copy), "--samples", "40", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"map_png": path}
    drawn = Image.open(path).tobytes()
    code, _, err = run(main, ["map", str(cache_copy), "--samples", "40", "--seed", "1"], capsys)
    assert code == 0 and Image.open(path).tobytes() != drawn  # other images drawn, another layout
    for argv, message in [(["--samples", "3"], "--samples 3 is too few to map; give 10 or more"),
                          (["--layers", "stage9"], "this cache has no layer stage9")]:
        code, _, err = run(main, ["map", str(cache_copy), *argv], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_calibration_error_is_how_far_the_probability_is_from_how_often_it_is_right():
    from classify.evaluate import calibration_error

    y_true = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 0])
    y_pred = np.zeros(10, dtype=int)  # right 6 times in 10
    says = np.full((10, 2), 0.5)
    says[:, 0] = 0.6
    says[:, 1] = 0.4
    assert calibration_error(says, y_true, y_pred) == pytest.approx(0.0)
    says[:, 0], says[:, 1] = 0.95, 0.05
    assert calibration_error(says, y_true, y_pred) == pytest.approx(0.35)


def test_accuracy_by_confidence_is_share_and_accuracy_at_or_above_each_probability():
    from classify.evaluate import accuracy_by_confidence, format_by_confidence

    confidence = np.array([0.4, 0.55, 0.6, 0.75, 0.9, 0.92, 0.97, 0.99])
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    y_pred = np.zeros(8, dtype=int)
    y_true = np.array([1, 1, 0, 0, 1, 0, 0, 0])  # wrong at 0.4, 0.55 and 0.9
    table = accuracy_by_confidence(probabilities, y_true, y_pred, thresholds=(0.5, 0.9, 0.95, 0.995))
    assert table == [{"min_probability": 0.5, "share": 7 / 8, "accuracy": 5 / 7},
                     {"min_probability": 0.9, "share": 4 / 8, "accuracy": 3 / 4},
                     {"min_probability": 0.95, "share": 2 / 8, "accuracy": 1.0},
                     {"min_probability": 0.995, "share": 0.0, "accuracy": None}]
    assert format_by_confidence(table).splitlines()[2].split()[-5:] == ["them", "71.4%", "75.0%", "100.0%", "-"]


def test_heads_with_probabilities_report_their_test_log_loss(cache_copy, capsys):
    from sklearn.metrics import log_loss

    from classify.train import train_head

    knn = train_head(cache_copy, "knn", "n_neighbors=5", cv=2, n_jobs=1, log=lambda m: None)
    model, _ = load_model(knn.model_file)
    features, labels, _ = open_cache(cache_copy).load("test")
    assert knn.test_log_loss == pytest.approx(log_loss(labels, model.predict_proba(features)), rel=1e-5)
    assert 0 <= knn.test_calibration_error <= 1
    # the predictions are read off the probabilities: they are what the saved model predicts
    written = [line.split(",")[2] for line in Path(knn.predictions_csv).read_text().splitlines()[1:]]
    assert written == [knn.class_names[i] for i in model.predict(features)]
    assert np.mean(model.predict(features) == labels) == pytest.approx(knn.test_accuracy)
    code, out, _ = run(main, ["linearsvm", str(cache_copy), "--grid", "C=0.001", "--cv", "2", "--n-jobs", "1",
                              "--json"], capsys)
    assert code == 0 and json.loads(out)["test_log_loss"] is None  # an SVM without --probability gives none
    code, out, _ = run(main, ["logreg", str(cache_copy), "--grid", "C=0.01", "--cv", "2", "--n-jobs", "1"], capsys)
    assert code == 0 and "probabilities: test log loss " in out
    assert "predicted class's probability    >= 0.5   >= 0.7   >= 0.9  >= 0.95  >= 0.99" in out
    # the table from the saved model's own probabilities of the test images
    model, metadata = load_model(cache_copy.with_suffix(".logreg.joblib"))
    table = metadata["test_by_confidence"]
    confidence = model.predict_proba(features).max(axis=1)
    assert [row["share"] for row in table] == pytest.approx(
        [np.mean(confidence >= row["min_probability"]) for row in table])


def test_every_test_prediction_is_written_and_the_wrong_images_pictured(cache_copy, sample_dir, tmp_path):
    import csv
    from pathlib import Path

    from classify.train import train_head

    cache = shutil.copy(cache_copy, tmp_path / cache_copy.name)  # a model of its own, no other test writes over
    trained = train_head(cache, "logreg", "C=0.01", cv=2, n_jobs=1, log=lambda m: None)
    model, metadata = load_model(trained.model_file)
    features, labels, ids = open_cache(cache).load("test")
    predicted = model.predict(features)
    with open(trained.predictions_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    names = metadata["class_names"]
    assert [r["id"] for r in rows] == list(ids) and [r["true"] for r in rows] == [names[i] for i in labels]
    assert [r["predicted"] for r in rows] == [names[i] for i in predicted]
    # logreg gives probabilities: each row's is the one of its predicted class
    chosen = model.predict_proba(features)[np.arange(len(rows)), predicted]
    assert [float(r["probability"]) for r in rows] == pytest.approx(chosen, abs=5e-5)
    assert trained.n_wrong == sum(r["true"] != r["predicted"] for r in rows) > 0
    assert all((sample_dir / r["id"]).is_file() for r in rows)  # the ids name the images
    assert Path(trained.mistakes_png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mistakes_come_each_class_in_turn_the_most_confident_first():
    from classify.mistakes import mistake_order

    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([1, 2, 0, 0, 0, 2, 0, 1])
    confidence = np.array([0.5, 0.9, 0.99, 0.6, 0.7, 0.8, 0.4, 0.45])
    # wrong: 0 (class 0, 0.5), 1 (class 0, 0.9), 3 (1, 0.6), 4 (1, 0.7), 6 (2, 0.4), 7 (2, 0.45)
    assert mistake_order(y_true, y_pred, confidence).tolist() == [1, 4, 7, 0, 3, 6]
    assert mistake_order(y_true, y_pred, None).tolist() == [0, 3, 6, 1, 4, 7]
    assert mistake_order(y_true, y_true, None).tolist() == []


def test_sample_ids_name_files_of_folders_and_tables_only(sample_dir, tmp_path):
    from classify.mistakes import plot_mistakes
    from extract.datasets import sample_file

    file = "test/cat/0000.jpg"
    assert sample_file(str(sample_dir), file) == sample_dir / file
    assert sample_file(str(sample_dir / "labels.csv"), file) == sample_dir / file  # relative to the table's folder
    assert sample_file("cifar10", "test[3]") is None and sample_file("digits", "test[3]") is None
    assert sample_file(str(tmp_path / "moved"), file) is None
    y_true, y_pred = np.array([0, 1]), np.array([1, 0])
    assert plot_mistakes("digits", np.array(["test[0]", "test[1]"]), y_true, y_pred, None, ["a", "b"],
                         tmp_path / "m.png", "t") is None and not (tmp_path / "m.png").exists()


def _synthetic_cache(path, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]):
    """A complete cache entry of given (features, labels) per split, as extract writes one (no images behind it)."""
    from conftest import placeholder_info

    from extract.store import CacheWriter, SplitRows

    width = next(iter(splits.values()))[0].shape[1]
    info = placeholder_info(backbone="synthetic", class_names=class_names, layer="penultimate",
                            layout=[["penultimate", 0, width]])
    rows = {name: SplitRows([f"{name}{n}" for n in range(len(labels))], labels)
            for name, (_, labels) in splits.items()}
    writer = CacheWriter(path, info, rows, width)
    for name, (features, _) in splits.items():
        writer.write(name, 0, features.astype(np.float32))
    return writer.finish()


def test_suspects_are_the_train_images_whose_label_the_features_contradict(tmp_path):
    from classify.suspects import find_suspects

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = rng.normal(size=(120, 8)) + 6 * np.eye(3, 8)[labels]  # three well separated clusters
    flipped = np.array([3, 50, 95, 100])
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3
    cache = _synthetic_cache(tmp_path / "blobs.h5", {"train": (features, noisy), "test": (features, labels)},
                             ["a", "b", "c"])
    found = find_suspects(cache, cv=3, n_jobs=1, log=lambda m: None)
    assert sorted(found.rows.tolist()) == flipped.tolist()  # these, and no image of a clean label
    assert (found.predicted[flipped] == labels[flipped]).all()
    own = found.probabilities[found.rows, noisy[found.rows]]
    assert (np.diff(own) >= 0).all()  # the label with the least probability first
    with open(found.csv_path) as file:
        assert len(file.read().splitlines()) == 1 + len(flipped)
    assert found.png_path is None  # no image files behind this cache


def test_suspects_command_lists_pictures_and_writes_them(cache_copy, capsys):
    code, out, err = run(main, ["suspects", str(cache_copy), "--cv", "2", "--n-jobs", "1"], capsys)
    assert code == 0 and "out-of-fold logreg probabilities of 60 train images, 2 folds" in err
    assert "| 6/6 [" in err  # a bar over the search's fits: 2 folds x 3 values of C
    count = int(out.split("\n")[1].split()[0])
    listed = [line for line in out.splitlines() if line.startswith("  train/")]
    assert count > 0 and len(listed) == min(10, count)
    csv_path = cache_copy.with_suffix(".suspects.csv")
    assert len(csv_path.read_text().splitlines()) == 1 + count
    code, out, _ = run(main, ["suspects", str(cache_copy), "--cv", "2", "--n-jobs", "1", "--json"], capsys)
    found = json.loads(out)
    assert code == 0 and found["train_images"] == 60 and len(found["suspects"]) == count
    # --seed shuffles the folds: another seed, other out-of-fold probabilities; the same seed, the same
    again, other = (json.loads(run(main, ["suspects", str(cache_copy), "--cv", "2", "--n-jobs", "1", "--json", *seed],
                                   capsys)[1]) for seed in ([], ["--seed", "1"]))
    assert again["suspects"] == found["suspects"] and other["suspects"] != found["suspects"]
    assert [s["id"] for s in found["suspects"][:10]] == [line.split("\t")[0].strip() for line in listed]
    assert cache_copy.with_suffix(".suspects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(main, ["suspects", str(cache_copy), "--cv", "1"], capsys)
    assert code == 2 and err.strip() == "error: --cv must be 2 or more, not 1"
    code, _, err = run(main, ["suspects", str(cache_copy), "--layers", "stage9"], capsys)
    assert code == 2 and err.startswith("error: ") and "stage9" in err and len(err.strip().splitlines()) == 1


def test_duplicates_are_the_test_images_nearly_equal_to_a_train_image(tmp_path, monkeypatch):
    import classify.duplicates
    from classify.duplicates import find_duplicates

    monkeypatch.setattr(classify.duplicates, "CHUNK_ROWS", 7)  # several chunks of test rows
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 16))
    test = rng.normal(size=(30, 16))  # other images: cosine to any train row far below 0.9
    planted = {4: 17, 11: 3, 25: 40}  # test row -> the train row it copies, a little changed
    for row, source in planted.items():
        test[row] = 2 * train[source] + 0.05 * rng.normal(size=16)  # the scale does not matter to a cosine
    labels = np.arange(90) % 3
    cache = _synthetic_cache(tmp_path / "pairs.h5", {"train": (train, labels[:60]), "test": (test, labels[60:])},
                             ["a", "b", "c"])
    right = [i in planted or i % 3 == 0 for i in range(30)]  # a head's test predictions, right on the copies
    rows = [f"test{i},a,{'a' if ok else 'b'},\n" for i, ok in enumerate(right)]
    (tmp_path / "pairs.logreg.predictions.csv").write_text("id,true,predicted,probability\n" + "".join(rows))
    (tmp_path / "pairs.stage3.svm.predictions.csv").write_text("id,true,predicted,probability\n" + "".join(rows))
    found = find_duplicates(cache, log=lambda m: None)
    others = [ok for i, ok in enumerate(right) if i not in planted]
    assert found.accuracy_apart == {"logreg": (np.mean(right), 1.0, np.mean(others))}  # not another layer's svm
    assert sorted(found.test_rows.tolist()) == sorted(planted)
    assert dict(zip(found.test_rows.tolist(), found.nearest[found.test_rows].tolist(), strict=True)) == planted
    assert (np.diff(found.similarity[found.test_rows]) <= 0).all()  # most similar first
    assert found.similarity.max() <= 1 + 1e-6 and np.sort(found.similarity)[-4] < 0.9
    lines = found.csv_path.read_text().splitlines()
    assert lines[0] == "test_id,train_id,similarity,test_label,train_label" and len(lines) == 4
    assert found.png_path is None


def test_duplicates_command_lists_and_pictures_pairs(cache_copy, capsys):
    code, out, err = run(main, ["duplicates", str(cache_copy), "--threshold", "0.5"], capsys)
    assert code == 0 and "nearest of 60 train images to each of 60 test images" in err
    count = int(out.split("\n")[1].split()[0])
    pairs = [line.split("\t") for line in out.splitlines() if line.startswith("  test/")]
    assert count > 0 and len(pairs) == min(10, count) and all(p[1].startswith("train/") for p in pairs)
    assert [float(p[2]) for p in pairs] == sorted((float(p[2]) for p in pairs), reverse=True)
    assert len(cache_copy.with_suffix(".duplicates.csv").read_text().splitlines()) == 1 + count
    assert cache_copy.with_suffix(".duplicates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(main, ["duplicates", str(cache_copy), "--threshold", "0.5", "--json"], capsys)
    found = json.loads(out)
    assert code == 0 and found["test_images"] == 60 and len(found["near_copies"]) == count
    assert [[p["test_id"], p["train_id"], f"{p['similarity']:.3f}"] for p in found["near_copies"][:10]] == [
        [p[0].strip(), p[1], p[2]] for p in pairs]
    for threshold in ("0", "1.5"):
        code, _, err = run(main, ["duplicates", str(cache_copy), "--threshold", threshold], capsys)
        assert code == 2 and err.startswith(f"error: --threshold {float(threshold)}: give a cosine similarity")


@pytest.mark.parametrize("head", ["logreg", "linearsvm", "svm", "svm --probability"])
def test_balanced_weighs_uneven_classes_alike_and_chooses_by_balanced_accuracy(head, tmp_path, capsys):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])  # overlapping classes, one of them rare in train
    train_labels, test_labels = np.repeat(np.arange(3), [300, 100, 15]), np.repeat(np.arange(3), 100)
    cache = _synthetic_cache(tmp_path / "uneven.h5", {
        split: (centres[labels] + rng.normal(size=(len(labels), 2)), labels)
        for split, labels in (("train", train_labels), ("test", test_labels))}, ["large", "middle", "small"])
    common = [*head.split(), str(cache), "--cv", "3", "--n-jobs", "1", "--json"]
    code, out, err = run(main, common, capsys)
    plain = json.loads(out)
    assert code == 0 and "the train split's classes are uneven (300 images of large, 15 of small)" in err
    code, out, err = run(main, [*common, "--balanced"], capsys)
    weighted = json.loads(out)
    assert code == 0 and "uneven" not in err and "classes weighted alike, scored by balanced accuracy" in err
    assert (plain["scoring"], weighted["scoring"]) == ("accuracy", "balanced_accuracy")
    # the test split has 100 of each: its accuracy is the balanced one, and the rare class no longer gives way
    assert weighted["test_balanced_accuracy"] == pytest.approx(weighted["test_accuracy"])
    assert weighted["test_balanced_accuracy"] > plain["test_balanced_accuracy"] + 0.05
    model, _ = load_model(weighted["model_file"])
    classifier = model.named_steps["clf"]
    assert getattr(classifier, "estimator", classifier).class_weight == "balanced"


def test_balanced_accuracy_is_printed_where_it_chose_the_parameters(cache_copy, capsys):
    code, out, err = run(main, ["logreg", str(cache_copy), "--grid", "C=0.01", "--cv", "2", "--n-jobs", "1",
                                "--balanced"], capsys)
    assert code == 0 and "(cv balanced accuracy " in out and "test accuracy " in out
    assert "   balanced accuracy " in out  # printed, though equal, since it chose the parameters
    code, out, err = run(main, ["logreg", str(cache_copy), "--grid", "C=0.01", "--cv", "2", "--n-jobs", "1"], capsys)
    assert code == 0 and "(cv accuracy " in out and "balanced accuracy" not in out + err  # 6 images of each class


def test_test_predictions_read_back_as_written(tmp_path):
    from classify.mistakes import read_test_predictions, save_test_predictions

    names = ["cat", "dog", "ship"]
    y_true, y_pred = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1])
    save_test_predictions(tmp_path / "p.csv", tmp_path / "m.png", "", np.array([f"x{i}" for i in range(5)]), y_true,
                          y_pred, None, names, "wrong")
    assert read_test_predictions(tmp_path / "p.csv", names).tolist() == y_pred.tolist()


def test_parallel_pairwise_fits_are_bounded_by_free_memory(cache_copy, monkeypatch):
    import classify.train
    from classify.pairwise_svm import fit_memory_bytes

    labels = np.repeat(np.arange(10), 5000)  # CIFAR-10's train split: 10-fold fits need 90% of the final fit's memory
    whole = fit_memory_bytes(np.bincount(labels))
    assert whole == 4 * 10 * 5000**2 + 8 * 10000**2 + 4 * 5000**2  # by hand: 1.77 GiB
    said = []
    monkeypatch.setattr(classify.train, "available_memory", lambda: whole)  # the final fit fits, two folds' do not
    assert classify.train.pairwise_jobs(labels, 10, 4, said.append) == 1
    assert said and "1 parallel fit(s) instead of 4" in said[0]
    monkeypatch.setattr(classify.train, "available_memory", lambda: 10 * whole)
    assert classify.train.pairwise_jobs(labels, 10, 4, said.append) == 4
    _, cached_labels, _ = open_cache(cache_copy).load("train")
    monkeypatch.setattr(classify.train, "available_memory", lambda: fit_memory_bytes(np.bincount(cached_labels)) - 1)
    with pytest.raises(UsageError, match="svm head's kernels need"):
        classify.train.train_head(cache_copy, "svm", pairwise=True, cv=2, n_jobs=2, log=said.append)
