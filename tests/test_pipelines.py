"""Fine-tuning modes, learning rates, resume, and the comparison report, on tiny but real runs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run

from extract.__main__ import main as extract_main
from extract.datasets import resolve_dataset
from extract.store import open_cache
from pipelines.__main__ import main
from pipelines.finetune import FinetuneConfig, finetune, prepare_model
from pipelines.finetune.checkpoint import comparable, same_settings
from pipelines.finetune.surgery import parameter_groups

TINY = dict(backbone="efficientnet_lite0", image_size=48, limit_per_class=4, epochs=1, batch_size=16, workers=0)


@pytest.fixture(scope="module")
def tiny_dataset(sample_dir):
    return resolve_dataset(str(sample_dir), limit_per_class=4)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode, trains", [
    ("head", {"classifier"}),
    ("partial", {"blocks.5", "blocks.6", "conv_head", "bn2", "classifier"}),
    ("full", None),
    ("scratch", None),
])
def test_each_mode_trains_only_what_it_should(mode, trains, tiny_dataset, sample_dir, tmp_path):
    config = FinetuneConfig(dataset=str(sample_dir), mode=mode, out=str(tmp_path), **TINY)
    model, _, head = prepare_model(config, 10)
    trainable = {name.rsplit(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad}
    if trains is None:
        assert all(p.requires_grad for p in model.parameters())
    else:
        assert all(any(name == t or name.startswith(t + ".") for t in trains) for name in trainable)
        assert all(any(name == t or name.startswith(t + ".") for name in trainable) for t in trains)

    torch.manual_seed(config.seed)
    before = snapshot(prepare_model(config, 10)[0])  # same seed, same new head as the run below
    finetune(config, dataset=tiny_dataset, log=lambda m: None)
    after = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if trains is None:
        assert any(k.startswith("conv_stem") for k in changed)
    else:
        # frozen weights and frozen batch-norm statistics are bit-identical after training
        assert changed and all(any(k.startswith(t + ".") for t in trains) for k in changed)


def test_head_learning_rate_is_the_multiple_asked_for(sample_dir):
    config = FinetuneConfig(dataset=str(sample_dir), mode="full", lr=0.003, head_lr_mult=7, **TINY)
    model, _, head = prepare_model(config, 10)
    groups = {g["name"]: g["lr"] for g in parameter_groups(model, head, config)}
    assert groups == {"head": pytest.approx(0.021), "backbone": pytest.approx(0.003)}
    for mode in ("head", "lp-ft"):  # head: nothing else trains; lp-ft: its layer starts trained. Both at --lr
        config = FinetuneConfig(dataset=str(sample_dir), mode=mode, lr=0.003, head_lr_mult=7, **TINY)
        model, _, head = prepare_model(config, 10)
        assert {g["name"]: g["lr"] for g in parameter_groups(model, head, config)}["head"] == pytest.approx(0.003)


def test_resume_continues_from_the_saved_epoch(sample_dir, tiny_dataset, tmp_path):
    config = FinetuneConfig(dataset=str(sample_dir), mode="head", out=str(tmp_path), **TINY)
    finetune(config, dataset=tiny_dataset, log=lambda m: None)
    messages = []
    config.epochs = 2
    result = finetune(config, resume=True, dataset=tiny_dataset, log=messages.append)
    assert any("resuming head from epoch 1" in m for m in messages)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert (tmp_path / "history.png").exists() and len((tmp_path / "history.csv").read_text().splitlines()) == 3


def test_fit_temperature_finds_the_temperature_that_made_the_labels():
    from scipy.special import softmax

    from classify.calibration import fit_temperature

    random = np.random.default_rng(0)
    logits = random.normal(scale=6, size=(20_000, 5))
    labels = np.array([random.choice(5, p=row) for row in softmax(logits / 2.5, axis=1)])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)
    # an underconfident softmax is sharpened: labels drawn from softmax(logits), fitted on logits halved
    assert fit_temperature(logits / 2.5 / 2, labels) == pytest.approx(0.5, rel=0.05)
    # but never where every image is right: those logits would want T -> 0
    assert fit_temperature(logits, logits.argmax(1)) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_the_test_log_loss_is_of_the_best_checkpoints_softmax(flip, sample_dir, tiny_dataset, tmp_path):
    """Against references outside the code under test: torchvision's transforms for the pixels, a grid over the
    temperature for its fit, scikit-learn's log loss."""
    from scipy.special import softmax
    from sklearn.metrics import log_loss
    from torchvision import transforms

    from pipelines.finetune.data import validation_split  # its own test checks it (every class validated)

    config = FinetuneConfig(dataset=str(sample_dir), mode="head", out=str(tmp_path), flip=flip, **TINY)
    result = finetune(config, dataset=tiny_dataset, log=lambda m: None)
    model, preprocess, _ = prepare_model(config, len(tiny_dataset.class_names))
    model.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=True)["model"])
    # the sample's images are 32 px, under the 48 px crop: resized up to it, the centre crop then keeps all of it
    to_input = transforms.Compose([
        transforms.Resize(48, interpolation=transforms.InterpolationMode(preprocess.interpolation)),
        transforms.CenterCrop(48), transforms.ToTensor(), transforms.Normalize(preprocess.mean, preprocess.std)])

    def logits(split, rows):
        inputs = torch.stack([to_input(split.image(i)) for i in rows])
        with torch.inference_mode():
            own = model.eval()(inputs).numpy()
            # --flip: each image scored by the mean of its logits and its mirror image's
            return (own + model(inputs.flip(-1)).numpy()) / 2 if flip else own

    # the softmax temperature is the one with the least log loss on the validation part carved from train
    train = tiny_dataset.splits["train"]
    _, val = validation_split(train.labels, config.val_fraction, config.seed)
    val_logits = logits(train, val)
    grid = np.geomspace(0.05, 20, 4001)
    losses = [log_loss(train.labels[val], softmax(val_logits / t, axis=1), labels=range(10)) for t in grid]
    assert result.temperature == pytest.approx(grid[int(np.argmin(losses))], rel=0.01)
    test = tiny_dataset.splits["test"]
    probabilities = softmax(logits(test, range(len(test))) / result.temperature, axis=1)
    assert result.test_log_loss == pytest.approx(log_loss(test.labels, probabilities, labels=range(10)), rel=1e-3)
    assert result.test_predictions == probabilities.argmax(1).tolist()
    # expected calibration error, 10 equal-width confidence bins: sum over bins of |accuracy - confidence| x share
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == test.labels
    bins = np.minimum((confidence * 10).astype(int), 9)
    expected_error = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
                         for b in np.unique(bins))
    assert result.test_calibration_error == pytest.approx(expected_error, abs=1e-3)
    # every test image's prediction as classify writes them, and the wrong ones pictured
    rows = [line.split(",") for line in (tmp_path / "predictions.csv").read_text().splitlines()[1:]]
    names = tiny_dataset.class_names
    assert [r[0] for r in rows] == test.ids and [r[2] for r in rows] == [names[i] for i in result.test_predictions]
    assert [float(r[3]) for r in rows] == pytest.approx(probabilities.max(1), abs=1e-3)
    assert (tmp_path / "mistakes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flip", [False, True])
def test_predict_classifies_new_images_as_the_run_scored_its_test_split(flip, sample_dir, tmp_path, capsys):
    run_folder = tmp_path / "run"
    config = FinetuneConfig(dataset=str(sample_dir), mode="head", out=str(run_folder), flip=flip, **TINY)
    result = finetune(config, log=print)
    assert "right among them" in capsys.readouterr().out  # the table that --min-probability is chosen by
    assert [row["min_probability"] for row in result.test_by_confidence] == [0.5, 0.7, 0.9, 0.95, 0.99]
    scored = {row[0]: row for row in (line.split(",") for line in
                                      (run_folder / "predictions.csv").read_text().splitlines()[1:])}
    new = tmp_path / "new"  # a folder of new images: copies of test images the run scored
    new.mkdir()
    ids = [i for i in scored if i.startswith("test/cat/")] + ["test/ship/0003.jpg"]
    for i in ids[:-1]:
        shutil.copy(sample_dir / i, new / Path(i).name)
    images = [str(new), str(sample_dir / ids[-1])]
    code, stdout, err = run(main, ["predict", str(run_folder), *images, "--min-probability", "0.6"], capsys)
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert code == 0 and [line[0] for line in lines] == [str(new / Path(i).name) for i in ids[:-1]] + [images[1]]
    unsure = 0
    for i, (_, label, probability) in zip(ids, lines, strict=True):
        _, _, predicted, expected = scored[i]
        assert float(probability) == pytest.approx(float(expected), abs=2e-3)
        assert label == ("unsure" if float(expected) < 0.6 else predicted)
        unsure += label == "unsure"
    assert err == f"{unsure} of {len(lines)} images below probability 0.6: printed as unsure\n"
    code, stdout, _ = run(main, ["predict", str(run_folder), *images, "--min-probability", "0.6", "--json"], capsys)
    objects = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and [o["path"] for o in objects] == [line[0] for line in lines]
    assert [o["probability"] for o in objects] == pytest.approx([float(line[2]) for line in lines], abs=1e-3)
    assert sum(o["unsure"] for o in objects) == unsure
    assert [o["label"] for o in objects if not o["unsure"]] == [line[1] for line in lines if line[1] != "unsure"]
    # the run's softmax temperature is applied: a very high one leaves every class about equally likely
    record = json.loads((run_folder / "result.json").read_text())
    (run_folder / "result.json").write_text(json.dumps({**record, "temperature": 1e4}))
    code, stdout, _ = run(main, ["predict", str(run_folder), images[1]], capsys)
    assert code == 0 and float(stdout.split("\t")[2]) == pytest.approx(0.1, abs=1e-3)


def test_predict_refuses_what_is_not_a_finished_run(sample_dir, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "best.pt").write_bytes(b"")
    (old / "result.json").write_text(json.dumps({"config": {}}))
    image = str(sample_dir / "test" / "cat" / "0000.jpg")
    for argv, message in [
        ([str(tmp_path), image], "is not the folder of a finished fine-tuning run (it needs result.json and best.pt)"),
        ([str(old), image], "was written by an older version, without the class names and softmax temperature"),
        ([str(old), image, "--min-probability", "0"], "--min-probability must be above 0 and at most 1"),
        ([str(old), str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
    ]:
        code, stdout, err = run(main, ["predict", *argv], capsys)
        assert code == 2 and not stdout and message in err and err.count("\n") == 1, err


def test_compare_writes_the_report(sample_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = run(main, ["compare", "efficientnet_lite0", str(sample_dir), "--strategies",
                                   "frozen,frozen-layers,head",
                                   "--image-size", "48", "--limit-per-class", "4", "--epochs", "1", "--workers", "0",
                                   "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json", "--balanced",
                                   "--flip", "--cv", "2", "--n-jobs", "1"],
                         capsys)
    assert code == 0
    assert "2-fold on 40 train samples" in err and "3-fold" not in err  # --cv reaches the frozen heads' searches
    rows = json.loads(stdout)
    assert [r["strategy"] for r in rows] == ["frozen", "frozen-layers", "head"]
    # each accuracy and its Wilson interval, from the strategy's saved predictions and the test folders' classes
    truth = np.repeat(np.arange(10), 4)  # the first 4 test images of each class, classes in name order
    for r in rows:
        predicted = np.asarray(json.loads((out / r["strategy"] / "row.json").read_text())["test_predictions"])
        p, n, z = float(np.mean(predicted == truth)), len(truth), 1.96
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(
            p * (1 - p) / n + z * z / (4 * n * n))
        assert r["test_accuracy"] == pytest.approx(p)
        assert r["test_accuracy_interval"] == pytest.approx([centre - half, centre + half])
    assert rows[0]["detail"].split()[:3] in (["logreg", "on", "penultimate"], ["svm", "on", "penultimate"])
    assert rows[1]["detail"].startswith("logreg on ")  # the layer it chose by CV follows
    # --balanced: the frozen heads chose by cross-validated balanced accuracy, fine-tuning kept its checkpoint by it
    assert all(", cv balanced accuracy " in r["detail"] for r in rows[:2])
    assert "val_balanced_accuracy" in torch.load(out / "head" / "best.pt", weights_only=True)
    report = (out / "report.md").read_text()
    assert "--balanced: classes weighted by the inverse of their train count" in report
    # --flip: the frozen strategies on features averaged with the mirror image's, fine-tuning scored the same way
    assert all("-flip__" in r["cache_file"] for r in rows[:2]) and "; --flip: every image scored" in report
    assert json.loads((out / "head" / "result.json").read_text())["config"]["flip"]
    assert "| balanced accuracy |" in report and all(f"| {r['test_balanced_accuracy']:.4f} |" in report for r in rows)
    assert "| frozen |" in report and "| frozen-layers |" in report and "| head |" in report
    low, high = rows[0]["test_accuracy_interval"]
    assert "| 95% interval |" in report and f"| {low:.3f}-{high:.3f} |" in report
    # the log loss of the strategies with probabilities: logreg on the chosen layer, and the fine-tuned softmax
    assert "| log loss |" in report and rows[2]["test_log_loss"] > 0
    assert all(f"| {r['test_log_loss']:.4f} |" in report for r in rows[1:])
    for png in ("val_curves.png", "test_accuracy.png", "samples.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"({png})" in report


@pytest.mark.parametrize("argv, message", [
    (["finetune", "efficientnet_lite0", "examples/cifar10-mini", "--mode", "partial", "--unfreeze-from", "layer9"],
     "--unfreeze-from 'layer9' is not a block"),
    (["finetune", "efficientnet_lite0", "examples/cifar10-mini", "--epochs", "0"], "--epochs must be 1 or more"),
    *[(["finetune", "efficientnet_lite0", "examples/cifar10-mini", option, value], f"{option} must be")
      for option, value in (("--lr", "-1"), ("--weight-decay", "-1"), ("--warmup-epochs", "-1"), ("--patience", "0"),
                            ("--workers", "-1"))],
    (["compare", "efficientnet_lite0", "examples/cifar10-mini", "--strategies", "frozen,magic"], "unknown strategy"),
    (["finetune", "efficientnet_lite0", "examples/cifar10-mini", "--image-size", "0"], "--image-size 0 is too small"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    code, _, err = run(main, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err



@pytest.mark.parametrize("command", ["finetune", "compare"])
def test_an_out_folder_that_is_a_file_is_one_line(command, capsys, tmp_path, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    blocker = tmp_path / "report.md"
    blocker.write_text("kept")
    code, _, err = run(main, [command, "efficientnet_lite0", "examples/cifar10-mini", "--out", str(blocker)], capsys)
    assert code == 2 and err.endswith(f"error: --out {blocker} cannot be a folder: a file is in its way; give a "
                                      "folder path\n"), err
    assert blocker.read_text() == "kept"

def uneven_copy(source, target, train_counts: dict[str, int]):
    """The named classes of an image folder, the first N train images of each and every test image."""
    import shutil

    for split in ("train", "test"):
        for name, count in train_counts.items():
            (target / split / name).mkdir(parents=True)
            for file in sorted((source / split / name).glob("*.jpg"))[:count if split == "train" else None]:
                shutil.copy(file, target / split / name / file.name)
    return target


def test_balanced_class_weights_are_the_inverse_train_counts():
    from pipelines.finetune.data import balanced_class_weights

    # images / (classes present x the class's images), as scikit-learn's class_weight="balanced"; class 1 has no
    # train image: weight 1, never in the loss
    weights = balanced_class_weights(np.array([0, 0, 0, 0, 0, 0, 2, 2]), 3)
    assert weights.tolist() == pytest.approx([8 / (2 * 6), 1, 8 / (2 * 2)])


def test_every_class_has_a_validation_image():
    from pipelines.finetune.data import validation_split

    labels = np.repeat([0, 1, 2], [30, 30, 4])  # 10% of 64 images by proportion: 3, 3 and 0 of class 2
    train, val = validation_split(labels, 0.1, seed=0)
    assert np.bincount(labels[val]).tolist() == [3, 3, 1]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)


def test_balanced_fine_tuning_finds_the_rare_class_and_keeps_checkpoints_by_balanced_accuracy(sample_dir, tmp_path,
                                                                                              capsys):
    from sklearn.metrics import recall_score

    data = uneven_copy(sample_dir, tmp_path / "data", {"airplane": 30, "automobile": 30, "bird": 4})
    results = {}
    for balanced in (False, True):
        results[balanced] = finetune(FinetuneConfig(
            backbone="efficientnet_lite0", dataset=str(data), mode="head", image_size=64, epochs=3, batch_size=16,
            # at the default rate the head's loss swings fivefold on 57 images, and which class the kept early
            # checkpoint favours is noise
            lr=0.001, workers=0, balanced=balanced, out=str(tmp_path / f"run-{balanced}")), log=print)
    log = capsys.readouterr().out
    bird = 2
    # weighted 7x the others in the loss, the rare class is predicted more often
    assert results[True].test_predictions.count(bird) > results[False].test_predictions.count(bird), log
    assert "classes weighted alike, checkpoints by validation balanced accuracy" in log
    history = results[True].history
    chosen = max(history, key=lambda row: row["val_balanced_accuracy"])  # the first of equal scores
    best = torch.load(tmp_path / "run-True" / "best.pt", weights_only=True)
    assert results[True].best_epoch == chosen["epoch"] == best["epoch"]
    assert best["val_balanced_accuracy"] == chosen["val_balanced_accuracy"]
    labels = resolve_dataset(str(data)).splits["test"].labels
    assert results[True].test_balanced_accuracy == pytest.approx(
        recall_score(labels, results[True].test_predictions, average="macro"))


def test_an_unreadable_image_stops_fine_tuning_with_its_name(sample_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    (data / "train" / "cat" / "0000.jpg").write_bytes(b"not a jpeg")
    code, _, err = run(main, ["finetune", "efficientnet_lite0", str(data), "--mode", "head", "--epochs", "1",
                              "--image-size", "64", "--limit-per-class", "4", "--workers", "1", "--out",
                              str(tmp_path / "run")], capsys)
    last = err.strip().splitlines()[-1]  # one line at the end, even from a loader worker process
    assert code == 2 and "error: cannot read 1 image(s): train/cat/0000.jpg" in last and "Traceback" not in err
    # --skip-bad: read through once, the unreadable image named and left out of training; frozen strategies too
    (data / "test" / "ship" / "0001.jpg").write_bytes(b"not a jpeg either")
    code, out, err = run(main, ["compare", "efficientnet_lite0", str(data), "--strategies", "frozen,head", "--epochs",
                                "1", "--image-size", "48", "--limit-per-class", "4", "--workers", "0", "--skip-bad",
                                "--cv", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "report"),
                                "--json"], capsys)
    assert code == 0, err
    assert "skipped unreadable: train/cat/0000.jpg" in err and "skipped unreadable: test/ship/0001.jpg" in err
    assert [row["strategy"] for row in json.loads(out)] == ["frozen", "head"]
    saved = {name: json.loads((tmp_path / "report" / name / "row.json").read_text()) for name in ("frozen", "head")}
    assert len(saved["frozen"]["test_predictions"]) == len(saved["head"]["test_predictions"]) == 39  # 40 less 1
    head = json.loads((tmp_path / "report" / "head" / "result.json").read_text())
    assert head["config"]["skip_bad"]


def test_fine_tuning_warns_of_test_images_copied_from_train(sample_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    shutil.copy(data / "train" / "cat" / "0001.jpg", data / "test" / "cat" / "0002.jpg")
    lines = []
    finetune(FinetuneConfig(dataset=str(data), mode="head", out=str(tmp_path / "run"), **TINY), log=lines.append)
    assert "warning: 1 test image(s) are byte-for-byte copies of train images (test/cat/0002.jpg = " \
        "train/cat/0001.jpg)" in lines[0]


def test_epoch_axes_tick_whole_epochs_only(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from pipelines.report import plot_history, plot_validation_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.3 * e, "val_accuracy": 0.25 * e} for e in (1, 2)]
    plot_history(history, tmp_path / "history.png")
    plot_validation_curves({"head": history}, tmp_path / "curves.png")
    for figure in figures:
        for axes in figure.axes:
            ticks = [tick for tick in axes.get_xticks() if 1 <= tick <= 2]
            assert ticks == [1, 2], ticks


def test_sample_titles_do_not_cover_the_images_above(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    import pipelines.report

    figures, new_figure = [], pipelines.report._figure
    monkeypatch.setattr(pipelines.report, "_figure", lambda **options: figures.append(new_figure(**options)) or
                        figures[-1])
    images = [np.full((32, 32, 3), 200, dtype=np.uint8)] * 16
    pipelines.report.plot_samples(images, ["automobile"] * 16, ["airplane"] * 16, tmp_path / "samples.png",
                                  "frozen: predicted (true)")
    (figure,) = figures
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(axes.title.get_window_extent(renderer), axes.get_window_extent(renderer)) for axes in figure.axes]
    for title, own in boxes:
        assert not any(title.overlaps(image) for _, image in boxes if image is not own)


def test_a_resumed_run_is_the_run_left_alone(sample_dir, tiny_dataset, tmp_path, monkeypatch):
    """Killed after its first epoch and resumed, a run gives the history and weights of the same run never stopped:
    every random state (the loader's shuffle, augmentation) is saved with the checkpoint and restored."""
    import pipelines.finetune.run as run_module

    settings = {**TINY, "epochs": 2}
    alone = finetune(FinetuneConfig(dataset=str(sample_dir), mode="partial", out=str(tmp_path / "alone"), **settings),
                     dataset=tiny_dataset, log=lambda m: None)
    stopped = FinetuneConfig(dataset=str(sample_dir), mode="partial", out=str(tmp_path / "stopped"), **settings)

    def killed(history, out):  # last.pt of epoch 1 is written just before
        raise RuntimeError("killed")

    monkeypatch.setattr(run_module, "write_history", killed)
    with pytest.raises(RuntimeError, match="killed"):
        finetune(stopped, dataset=tiny_dataset, log=lambda m: None)
    monkeypatch.undo()
    resumed = finetune(stopped, resume=True, dataset=tiny_dataset, log=lambda m: None)

    def timeless(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert timeless(resumed.history) == timeless(alone.history) and len(alone.history) == 2
    weights = [torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("alone", "stopped")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert resumed.test_predictions == alone.test_predictions


@pytest.mark.parametrize("schedule, warmup_epochs", [("cosine", 1.0), ("cosine", 0.0), ("step", 0.5), ("step", 0.0)])
def test_schedules_give_the_warm_up_and_decay_they_describe(schedule, warmup_epochs):
    """torch's schedulers, chained, give the rates of the formula: a linear ramp to lr over the warm-up, then
    cosine to zero or x0.1 at 50% and 75% of what follows."""
    import math

    from pipelines.finetune.schedule import build_schedule

    config = FinetuneConfig(epochs=3, lr=0.1, schedule=schedule, warmup_epochs=warmup_epochs)
    steps_per_epoch = 7
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_schedule(optimizer, config, steps_per_epoch)
    total, warmup = 3 * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    def expected(step: int) -> float:
        if step < warmup:
            return 0.1 * (step + 1) / (warmup + 1)
        progress = (step - warmup) / (total - warmup)
        if schedule == "cosine":
            return 0.1 * 0.5 * (1 + math.cos(math.pi * progress))
        return 0.1 * 0.1 ** sum(progress >= m for m in (0.5, 0.75))

    np.testing.assert_allclose(rates, [expected(step) for step in range(total)], rtol=1e-9, atol=1e-12)


def test_lp_ft_starts_from_the_probe_of_the_cached_features(sample_dir, tiny_dataset, tmp_path):
    """Epoch 0 of lp-ft is the network before any update, with the logistic-regression probe of the cached features
    of the train part as its output layer: the network's validation accuracy on images is that of scikit-learn's
    logistic regression (the C it logged, on standardised features) fitted on the cached train-part features."""
    import re

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipelines.finetune.data import validation_split

    config = FinetuneConfig(dataset=str(sample_dir), mode="lp-ft", out=str(tmp_path / "run"),
                            cache_dir=str(tmp_path / "cache"), **TINY)
    messages = []
    result = finetune(config, dataset=tiny_dataset, log=messages.append)
    assert [row["epoch"] for row in result.history] == [0, 1]
    (probe_line,) = [m for m in messages if "linear probe" in m]
    chosen_c = float(re.search(r"C=([0-9.e-]+)", probe_line).group(1))
    train_rows, val_rows = validation_split(tiny_dataset.splits["train"].labels, config.val_fraction, config.seed)
    (cache_file,) = (tmp_path / "cache").glob("*.h5")
    features, labels, ids = open_cache(cache_file).load("train")
    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    train, val = ([row_of[tiny_dataset.splits["train"].ids[row]] for row in rows] for rows in (train_rows, val_rows))
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=chosen_c, max_iter=10_000))
    reference.fit(features[train], labels[train])
    assert result.history[0]["val_accuracy"] == pytest.approx(reference.score(features[val], labels[val]))
    assert any("linear probe" in m for m in messages) and any("epoch 0" in m for m in messages)
    # the mean gradient norm of an epoch's steps; epoch 0 took none (an empty CSV field)
    assert result.history[0]["grad_norm"] is None and 0 < result.history[1]["grad_norm"] < float("inf")
    header, probe_row = (tmp_path / "run" / "history.csv").read_text().splitlines()[:2]
    assert header.endswith(",grad_norm") and probe_row.endswith(",")


def test_the_folded_probe_is_the_scaled_logistic_regression(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from pipelines.finetune.probe import fold_scaler

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (60, 5))
    for classes in ([0, 1, 2, 3], [1, 3]):  # several classes, and two of four (one decision function; two unseen)
        y = np.asarray(classes)[rng.integers(0, len(classes), 60)]
        scaler = StandardScaler().fit(x)
        classifier = LogisticRegression().fit(scaler.transform(x), y)
        weight, bias = fold_scaler(scaler, classifier, 4)
        logits = x @ weight.T + bias
        np.testing.assert_array_equal(logits.argmax(1), classifier.predict(scaler.transform(x)))
        shown = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose((shown / shown.sum(1, keepdims=True))[:, classifier.classes_],
                                   classifier.predict_proba(scaler.transform(x)), atol=1e-5)


def test_compare_resumes_reading_back_finished_strategies(sample_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["compare", "efficientnet_lite0", str(sample_dir), "--strategies", "frozen,head", "--image-size", "48",
            "--limit-per-class", "4", "--epochs", "2", "--workers", "0", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--json"]
    code, stdout, _ = run(main, argv, capsys)
    first = json.loads(stdout)
    # the fine-tuning was cut short after its first epoch: its row is missing, its checkpoint there
    (out / "head" / "row.json").unlink()
    state = torch.load(out / "head" / "last.pt", weights_only=True)
    state.update(epoch=1, history=state["history"][:1])
    torch.save(state, out / "head" / "last.pt")
    code, stdout, err = run(main, [*argv, "--resume"], capsys)
    assert code == 0 and "read back from" in err and "resuming head from epoch 1" in err
    again = json.loads(stdout)
    assert again[0] == first[0] and [r["strategy"] for r in again] == ["frozen", "head"]
    code, _, err = run(main, [*argv, "--resume", "--seed", "1"], capsys)
    assert code == 2 and "written by a comparison with other settings" in err


def test_train_per_class_cuts_the_train_split_only(sample_dir):
    whole = resolve_dataset(str(sample_dir))
    cut = resolve_dataset(str(sample_dir), train_per_class=3)
    assert np.bincount(cut.splits["train"].labels).tolist() == [3] * 10
    assert cut.splits["train"].ids == [i for i in whole.splits["train"].ids if i in set(cut.splits["train"].ids)]
    assert cut.splits["test"].ids == whole.splits["test"].ids and cut.fingerprint != whole.fingerprint
    # a cut that removes nothing is the dataset itself, and names the same cache entries
    assert resolve_dataset(str(sample_dir), train_per_class=10_000).fingerprint == whole.fingerprint
    # a run handed the whole dataset cuts it as its config says; one handed the cut already keeps it
    from pipelines.finetune.data import run_dataset

    config = FinetuneConfig(dataset=str(sample_dir), train_per_class=3)
    assert run_dataset(config, whole).fingerprint == cut.fingerprint == run_dataset(config).fingerprint
    assert run_dataset(config, cut) is cut and run_dataset(FinetuneConfig(dataset=str(sample_dir)), whole) is whole


def test_compare_draws_the_learning_curve_on_one_test_split(sample_dir, tmp_path, capsys):
    out = tmp_path / "curve"
    argv = ["compare", "efficientnet_lite0", str(sample_dir), "--strategies", "frozen,head", "--image-size", "48",
            "--epochs", "1", "--workers", "0", "--train-per-class", "100,3", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--json"]
    code, stdout, err = run(main, argv, capsys)
    assert code == 0
    points = json.loads(stdout)
    whole = len(resolve_dataset(str(sample_dir)).splits["train"]) // 10
    assert list(points) == ["3", str(whole)]  # ascending; 100 a class is all there is
    for size in points:  # every point scored on every test image
        for strategy in ("frozen", "head"):
            assert len(json.loads((out / f"train-{size}" / strategy / "row.json").read_text())["test_predictions"]) \
                == 100
    assert "taking the features of the" in err  # the second point's frozen features came from the first's entry
    settings = json.loads((out / f"train-{whole}" / "frozen" / "row.json").read_text())["settings"]
    assert settings["train_per_class"] is None  # the whole split: the same run as a comparison without the option
    assert json.loads((out / "train-3" / "head" / "row.json").read_text())["settings"]["train_per_class"] == 3
    cut_entry = json.loads((out / "train-3" / "frozen" / "row.json").read_text())["cache_file"]
    assert open_cache(cut_entry).info.train_per_class == 3 and len(open_cache(cut_entry).load("train")[1]) == 30
    assert run(extract_main, ["--verify", cut_entry], capsys)[0] == 0  # the cut dataset fingerprints again
    report = (out / "report.md").read_text()
    assert "| [3](train-3/report.md) |" in report and "(learning_curve.png)" in report
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "head** beats the best frozen strategy at" in report
    code, stdout, err = run(main, [*argv, "--resume"], capsys)
    assert code == 0 and err.count("read back from") == 4 and "extracting" not in err


@pytest.mark.parametrize("value", ["0", "a,b", ","])
def test_a_bad_train_size_is_one_line(value, capsys):
    code, stdout, err = run(main, ["compare", "efficientnet_lite0", "examples/cifar10-mini", "--train-per-class",
                                   value], capsys)
    assert code == 2 and not stdout and "--train-per-class" in err and err.count("\n") == 1, err


def test_settings_saved_before_a_field_was_added_still_match():
    config = FinetuneConfig(dataset="photos", **TINY)
    saved = comparable(config)
    saved.pop("train_per_class")  # as a run of the version before it wrote them
    assert same_settings(saved, config)
    assert not same_settings(saved, FinetuneConfig(dataset="photos", train_per_class=3, **TINY))
    assert not same_settings({**saved, "seed": 1}, config)


def test_a_history_resumed_from_an_earlier_version_writes_every_column(tmp_path, monkeypatch):
    """Rows of a run begun before a column was added lack it; the CSV keeps every column and leaves theirs empty."""
    import pipelines.report
    from pipelines.finetune.run import write_history

    monkeypatch.setattr(pipelines.report, "plot_history", lambda history, path: path)
    old = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.4}
    write_history([old, {**old, "epoch": 2, "grad_norm": 3.5}], tmp_path)
    assert (tmp_path / "history.csv").read_text().splitlines() == [
        "epoch,train_loss,train_accuracy,val_accuracy,grad_norm", "1,1.0,0.5,0.4,", "2,1.0,0.5,0.4,3.5"]


def test_auto_precision_is_resolved_for_the_machine_and_recorded(sample_dir, tiny_dataset, tmp_path, monkeypatch):
    import pipelines.finetune.run
    import pipelines.finetune.trainer
    from pipelines.__main__ import build_parser

    assert build_parser().parse_args(["finetune", "b", "d", "--precision", "auto"]).precision == "auto"
    asked, used = [], []
    monkeypatch.setattr(pipelines.finetune.run, "resolve_precision",
                        lambda precision, device: asked.append(precision) or "bf16")  # as on a bf16-native CPU
    original = pipelines.finetune.trainer.autocast
    monkeypatch.setattr(pipelines.finetune.trainer, "autocast",
                        lambda precision, device: used.append(precision) or original(precision, device))
    config = FinetuneConfig(dataset=str(sample_dir), mode="head", out=str(tmp_path), precision="auto", **TINY)
    finetune(config, dataset=tiny_dataset, log=lambda m: None)
    assert asked == ["auto"] and set(used) == {"bf16"}  # training and scoring in what auto resolved to
    assert json.loads((tmp_path / "result.json").read_text())["config"]["precision"] == "bf16"  # predict reads it
