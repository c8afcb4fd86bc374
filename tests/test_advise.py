"""The four-quadrant advisor: measured signals, the decision, the command, and --run through the same code."""

import json

import pytest
from conftest import run

from pipelines.__main__ import main

PROBE = ["--probe-per-class", "10", "--workers", "0"]


@pytest.fixture(scope="module")
def advice_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("advice-cache")


def test_a_small_photo_dataset_is_similar_and_gets_frozen_top_layer_features(sample_dir, advice_cache, capsys,
                                                                              tmp_path):
    code, out, err = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                                "--limit-per-class", "10", "--run", "--out", str(tmp_path / "run"), "--json"], capsys)
    assert code == 0, err
    advice = json.loads(out)
    assert (advice["size"], advice["similarity"], advice["quadrant"]) == ("small", "similar", "small, similar")
    signals = advice["signals"]
    assert signals["smallest_class"] == 10 and signals["probe_images"] == 100
    assert 0 < signals["imagenet_confidence"] < 1 and signals["probe_train_cv_gap"] >= 0
    assert signals["peak_layer"] == "penultimate" and signals["top_layer_margin"] > 0
    assert advice["strategy"] == "frozen" and "--strategies frozen " in advice["command"] + " "
    # 10 a class is under the size from which fine-tuning pays
    assert signals["smallest_class"] < advice["thresholds"]["fine_tune_min_per_class"]
    # every alternative with its time here: fine-tuning passes over the images backwards too, epoch after epoch
    times = {name: alternative["minutes"] for name, alternative in advice["alternatives"].items()}
    assert set(times) == {"frozen", "frozen-layers", "lp-ft", "full"}
    assert times["frozen"] > 0 and times["lp-ft"] > times["full"]  # lp-ft: full's passes after the frozen probe
    assert signals["train_images_per_second"] > 0 and signals["extract_images_per_second"] > 0
    # and the frozen recipe with the most accuracy: the offline backbones side by side, with its time here
    ensemble = advice["ensemble"]
    assert ensemble["command"] == ("python -m extract efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 "
                                   f"{sample_dir} --limit-per-class 10")
    assert ensemble["minutes"] > ensemble["minutes_alone"] == times["frozen"]
    # --run ran that strategy through the comparison pipeline and wrote its report
    assert advice["result"]["strategy"] == "frozen" and advice["result"]["test_accuracy"] > 0.3
    assert (tmp_path / "run" / "report.md").exists()
    # the probe's features went through the cache: a second advice extracts nothing
    code, _, err = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                              "--limit-per-class", "10"], capsys)
    assert code == 0 and "reusing" in err and "extracting" not in err


def test_digits_are_dissimilar_and_get_earlier_layers(advice_cache, capsys):
    code, out, err = run(main, ["advise", "digits", "--cache-dir", str(advice_cache), *PROBE,
                                "--limit-per-class", "20"], capsys)
    assert code == 0, err
    assert ", dissimilar" in out and "--strategies frozen-layers" in out
    assert "backbones side by side" not in out  # the ensemble measured its gains on the top layer
    assert "(penultimate probe minus stage" in out and "top-layer features from +0.00) -> frozen-layers" in out


def test_fine_tuning_is_recommended_where_the_rule_says_it_pays_and_the_budget_allows(sample_dir, advice_cache,
                                                                                      capsys, monkeypatch):
    import pipelines.advise

    monkeypatch.setattr(pipelines.advise, "FINE_TUNE_MIN_PER_CLASS", 10)
    monkeypatch.setattr(pipelines.advise, "FINE_TUNE_MIN_PROBE_ERROR", 0.0)
    arguments = ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE, "--limit-per-class", "10",
                 "--epochs", "2"]
    code, out, _ = run(main, [*arguments, "--budget", "600", "--json"], capsys)
    advice = json.loads(out)
    assert code == 0 and advice["quadrant"] == "large, similar" and advice["strategy"] == "lp-ft"
    assert advice["command"].endswith("--strategies lp-ft --limit-per-class 10 --epochs 2")
    lp_ft = advice["alternatives"]["lp-ft"]["minutes"]
    # a budget under lp-ft's time here: frozen, and the note says what budget would allow lp-ft
    budget = lp_ft / 2
    code, out, _ = run(main, [*arguments, "--budget", str(budget)], capsys)
    assert code == 0 and "--strategies frozen" in out and "--strategies lp-ft" not in out
    assert "lp-ft is expected to gain, and needs about" in out
    assert f"over the budget of {pipelines.advise._duration(budget)}" in out
    # a budget under even frozen features' time: still the frozen advice, and what to do about the time
    code, out, _ = run(main, [*arguments, "--budget", "0.001"], capsys)
    assert code == 0 and "--strategies frozen" in out and "even frozen needs about " in out
    assert "over the budget: --limit-per-class N advises on a sample" in out


@pytest.mark.parametrize("budget", ["0", "-5", "nan"])
def test_a_budget_that_is_not_a_positive_time_is_one_line_and_exit_2(sample_dir, tmp_path, capsys, budget):
    code, _, err = run(main, ["advise", str(sample_dir), "--budget", budget, "--cache-dir", str(tmp_path)], capsys)
    assert code == 2 and f"--budget must be a positive number of minutes, not {float(budget):g}" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_too_few_images_a_class_is_frozen_as_the_safe_choice_without_measuring(sample_dir, tmp_path, capsys):
    code, out, err = run(main, ["advise", str(sample_dir), "--limit-per-class", "3", "--cache-dir", str(tmp_path),
                                *PROBE], capsys)
    assert code == 0, err
    assert "not enough data to tell: the smallest class has 3 train images" in out
    assert "frozen is the safe choice" in out and "--strategies frozen --limit-per-class 3" in out
    assert list(tmp_path.iterdir()) == []  # nothing extracted: no signal is read from 3 images a class


def test_uneven_classes_are_named_with_what_to_do(sample_dir, advice_cache, capsys, tmp_path):
    uneven = tmp_path / "uneven"
    for split in ("train", "test"):
        for folder in sorted((sample_dir / split).iterdir()):
            keep = sorted(folder.iterdir())[:6 if (split, folder.name) == ("train", "truck") else None]
            (uneven / split / folder.name).mkdir(parents=True)
            for image in keep:
                (uneven / split / folder.name / image.name).symlink_to(image)
    code, out, err = run(main, ["advise", str(uneven), "--cache-dir", str(advice_cache), *PROBE], capsys)
    assert code == 0, err
    assert "smallest class 6" in out and "uneven: the largest class has 30 train images" in out
    assert "python -m classify logreg --balanced" in out
    code, out, _ = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                              "--limit-per-class", "10"], capsys)  # the first test's probe, from the cache
    assert code == 0 and "uneven" not in out


def test_bad_probe_size_is_one_line_and_exit_2(sample_dir, tmp_path, capsys):
    code, _, err = run(main, ["advise", str(sample_dir), "--probe-per-class", "1", "--cache-dir", str(tmp_path)],
                       capsys)
    assert code == 2 and "--probe-per-class must be 2 or more" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("smallest", "probe_accuracy", "margin", "expected"), [
    (1000, 0.60, +0.1, "lp-ft"),  # data enough, error left, and the top layer to start from: fine-tune
    (1000, 0.60, -0.1, "frozen-layers"),  # an earlier layer is better: lp-ft would start from a weak probe
    (1000, 0.95, +0.1, "frozen"), (1000, 0.95, -0.1, "frozen-layers"),  # frozen features leave too little
    (20, 0.60, +0.1, "frozen"), (20, 0.60, -0.1, "frozen-layers"),  # too few images to fine-tune on
])
def test_the_rule_fine_tunes_only_with_data_enough_error_left_and_the_top_layer_best(smallest, probe_accuracy,
                                                                                    margin, expected):
    from pipelines.advise import choose_strategy

    signals = {"smallest_class": smallest, "probe_accuracy": {"penultimate": probe_accuracy},
               "top_layer_margin": margin}
    assert choose_strategy(signals, min_per_class=100, min_probe_error=0.15) == expected
