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
    assert signals["imagenet_confidence"] >= advice["thresholds"]["min_imagenet_confidence"]
    assert signals["peak_layer"] == "penultimate" and signals["top_layer_margin"] > 0
    assert advice["strategy"] == "frozen" and "--strategies frozen " in advice["command"] + " "
    # and the frozen recipe with the most accuracy: the offline backbones side by side, with its time here
    ensemble = advice["ensemble"]
    assert ensemble["command"] == ("python -m extract efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 "
                                   f"{sample_dir} --limit-per-class 10")
    assert ensemble["minutes"] > ensemble["minutes_alone"] > 0
    # --run ran that strategy through the comparison pipeline and wrote its report
    assert advice["result"]["strategy"] == "frozen" and advice["result"]["test_accuracy"] > 0.3
    assert (tmp_path / "run" / "report.md").exists()
    # the probe's features went through the cache: a second advice extracts nothing
    code, _, err = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                              "--limit-per-class", "10"], capsys)
    assert code == 0 and "reusing" in err and "extracting" not in err


def test_digits_are_dissimilar_and_get_earlier_layers(advice_cache, capsys):
    code, out, err = run(main, ["advise", "digits", "--cache-dir", str(advice_cache), *PROBE], capsys)
    assert code == 0, err
    assert "quadrant: small, dissimilar" in out and "--strategies frozen-layers" in out
    assert "backbones side by side" not in out  # the ensemble measured its gains on the top layer
    assert "top-layer margin (penultimate - best earlier, stage" in out and "below" in out


def test_size_alone_moves_a_dataset_to_the_large_quadrant(sample_dir, advice_cache, capsys, monkeypatch):
    import pipelines.advise

    monkeypatch.setattr(pipelines.advise, "LARGE_PER_CLASS", {"similar": 10, "dissimilar": 1000})
    code, out, _ = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                              "--limit-per-class", "10", "--json"], capsys)
    advice = json.loads(out)
    assert code == 0 and advice["quadrant"] == "large, similar" and advice["strategy"] == "lp-ft"
    assert advice["command"].endswith("--strategies lp-ft --limit-per-class 10")


def test_uneven_classes_are_named_with_what_to_do(sample_dir, advice_cache, capsys, tmp_path):
    uneven = tmp_path / "uneven"
    for split in ("train", "test"):
        for folder in sorted((sample_dir / split).iterdir()):
            keep = sorted(folder.iterdir())[:4 if (split, folder.name) == ("train", "truck") else None]
            (uneven / split / folder.name).mkdir(parents=True)
            for image in keep:
                (uneven / split / folder.name / image.name).symlink_to(image)
    code, out, err = run(main, ["advise", str(uneven), "--cache-dir", str(advice_cache), *PROBE], capsys)
    assert code == 0, err
    assert "smallest class 4 " in out and "uneven: the largest class has 30 train images" in out
    assert "python -m classify logreg --balanced" in out
    code, out, _ = run(main, ["advise", str(sample_dir), "--cache-dir", str(advice_cache), *PROBE,
                              "--limit-per-class", "10"], capsys)  # the first test's probe, from the cache
    assert code == 0 and "uneven" not in out


def test_bad_probe_size_is_one_line_and_exit_2(sample_dir, tmp_path, capsys):
    code, _, err = run(main, ["advise", str(sample_dir), "--probe-per-class", "1", "--cache-dir", str(tmp_path)],
                       capsys)
    assert code == 2 and "--probe-per-class must be 2 or more" in err and list(tmp_path.iterdir()) == []
