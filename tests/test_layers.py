"""Several layers in one pass and one file; choosing among them by cross-validation on the train split only."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import QUICK, run

from classify.heads import LayerSelector
from extract.backbones import create_backbone
from extract.datasets import resolve_dataset
from extract.features import ExtractionSettings, Extractor
from extract.layers import FeatureModel, LayerPoint, feature_layers, layer_graph
from extract.store import open_cache

LITE0_WIDTHS = {"stage1": 16, "stage2": 24, "stage3": 40, "stage4": 112, "penultimate": 1280, "logits": 1000}


def test_stages_are_named_by_stride_across_architectures():
    lite = feature_layers(create_backbone("efficientnet_lite0", weights="none").model)
    resnet = feature_layers(create_backbone("resnet18", weights="none").model)
    assert list(lite) == list(resnet) == ["stage1", "stage2", "stage3", "stage4", "penultimate", "logits"]
    assert resnet["stage2"].module == "layer1.1" and resnet["stage4"].module == "layer3.1"
    assert lite["stage4"].module == "blocks.4" and lite["penultimate"].module == "global_pool.pool"
    maxvit = feature_layers(create_backbone("maxvit_t", weights="none").model)  # stages held in a ModuleList
    assert [(name, point.module) for name, point in maxvit.items() if name.startswith("stage")] == [
        ("stage1", "stem.1"), ("stage2", "blocks.0"), ("stage3", "blocks.1"), ("stage4", "blocks.2")]


@pytest.mark.parametrize(("name", "layers", "pool"), [
    ("resnet18", "stage1,stage3,penultimate,logits", "avgmax"),
    ("densenet121", "stage3,penultimate", "avg"),  # its penultimate is the classifier's input, after a functional pool
    ("efficientnet_lite0", "all,logits", "avgmax"),  # timm: modules that do not trace stay calls
    ("mobilenet_v3_small", "stage2", "max"),
    ("swin_t", "stage2,stage4,penultimate", "avgmax"),  # stages in (N, H, W, C) layout
])
@torch.no_grad()
def test_one_graph_computes_what_the_hooks_capture(name, layers, pool):
    model = FeatureModel(create_backbone(name, weights="none", image_size=64).model, pool, layers).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.as_graph()(images), model(images))


@torch.no_grad()
def test_flip_averages_each_images_vectors_with_its_mirror_images_in_graph_and_hooks_alike():
    backbone = create_backbone("resnet18", weights="none", image_size=64).model
    flipped, plain = (FeatureModel(backbone, "avgmax", "stage2,penultimate", flip).eval() for flip in (True, False))
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = (plain(images) + plain(images.flip(-1))) / 2
    torch.testing.assert_close(flipped(images), expected)
    torch.testing.assert_close(flipped.as_graph()(images), expected)
    assert flipped.layout == plain.layout and not torch.allclose(flipped(images), plain(images))


@torch.no_grad()
def test_channels_last_stages_are_pooled_over_their_height_and_width():
    model = create_backbone("swin_t", weights="none", image_size=64).model
    assert feature_layers(model)["stage2"] == LayerPoint("features.1", False, True, channels_last=True)
    captured = {}
    model.features[1].register_forward_hook(lambda module, inputs, output: captured.update(map=output))
    features = FeatureModel(model, "avgmax", "stage2")(torch.randn(2, 3, 64, 64))
    assert captured["map"].shape == (2, 16, 16, 96) and features.shape == (2, 192)
    assert torch.equal(features, torch.cat([captured["map"].mean((1, 2)), captured["map"].amax((1, 2))], 1))


def test_the_graph_stops_at_the_deepest_layer_and_untraceable_models_have_none():
    resnet = create_backbone("resnet18", weights="none").model
    graph = layer_graph(resnet, {"stage2": feature_layers(resnet)["stage2"]})
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
    assert "layer1.1" in called and not called & {"layer2", "layer2.0", "layer3", "layer4", "fc"}

    class BranchesOnValues(torch.nn.Module):
        def forward(self, images):
            return images if images.sum() > 0 else -images

    assert layer_graph(BranchesOnValues(), {}) is None


def test_every_requested_layer_is_written_in_one_pass(layers_cache, sample_dir):
    cache = open_cache(layers_cache)
    assert {name: stop - start for name, (start, stop) in cache.layout.items()} == LITE0_WIDTHS
    features, _, ids = cache.load("test")
    assert features.shape == (60, sum(LITE0_WIDTHS.values()))

    backbone = create_backbone("efficientnet_lite0", image_size=96)
    calls = []
    backbone.model.register_forward_pre_hook(lambda module, inputs: calls.append(len(inputs[0])))
    extractor = Extractor(backbone, "avg", ExtractionSettings(batch_size=64, workers=0), "stage2,penultimate")
    extractor.batch_features(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))  # first use: the fold's own probe passes
    calls.clear()
    split = resolve_dataset(str(sample_dir), limit_per_class=6).splits["test"]
    (_, together, _), = list(extractor.split_features(split))
    assert calls == [60]  # one forward pass of the batch gives both layers
    layout = dict((name, (a, b)) for name, a, b in extractor.layout)
    for name in ("stage2", "penultimate"):
        start, stop = cache.layout[name]
        np.testing.assert_allclose(together[:, slice(*layout[name])], features[:, start:stop], rtol=1e-4, atol=1e-4)


def test_avgmax_doubles_spatial_layers_only(sample_dir):
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    layout = Extractor(backbone, "avgmax", ExtractionSettings(), "stage3,logits").layout
    assert [(name, b - a) for name, a, b in layout] == [("stage3", 80), ("logits", 1000)]


def test_single_layer_caches_of_format_1_stay_readable(lite_cache, tmp_path, capsys):
    old = tmp_path / lite_cache.name
    shutil.copy(lite_cache, old)
    with h5py.File(old, "a") as file:  # what version 1 wrote: no layout, format 1
        del file.attrs["layout"]
        file.attrs["format_version"] = 1
    assert open_cache(old).layout == {"penultimate": (0, 1280)}
    from classify.__main__ import main

    code, out, err = run(main, ["logreg", str(old), "--cv", "2", "--n-jobs", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["layer"] == "penultimate" and json.loads(out)["feature_dim"] == 1280


def test_unknown_format_is_refused_with_the_fix(lite_cache, tmp_path, capsys):
    newer = tmp_path / lite_cache.name
    shutil.copy(lite_cache, newer)
    with h5py.File(newer, "a") as file:
        file.attrs["format_version"] = 9
    before = newer.read_bytes()
    from classify.__main__ import main

    code, _, err = run(main, ["logreg", str(newer)], capsys)
    assert code == 2 and "cache format 9" in err and "--force" in err and newer.read_bytes() == before



def test_hdf5_file_of_another_tool_is_named_as_such(tmp_path, capsys):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as file:
        file["x"] = [0.0, 1.0]
    from classify.__main__ import main

    code, _, err = run(main, ["logreg", str(foreign)], capsys)
    assert code == 2 and "not a feature cache" in err and "python -m extract" in err

def _permuted_test_labels(path, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    with h5py.File(copy, "a") as file:
        labels = file["test"]["labels"][...]
        file["test"]["labels"][...] = np.random.default_rng(0).permutation(labels)
    return copy


def test_layer_best_is_chosen_by_cross_validation_on_train_only(layers_cache, tmp_path, capsys):
    from classify.__main__ import main

    args = ["logreg", "--layers", "best", "--grid", "C=0.1", "--cv", "3", "--n-jobs", "1", "--json"]
    code, out, err = run(main, [args[0], str(layers_cache), *args[1:]], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result["layer_scores"]) == {"stage1", "stage2", "stage3", "stage4", "penultimate"}
    assert result["layer"] == max(result["layer_scores"], key=result["layer_scores"].get)
    assert result["best_params"]["layer"] == result["layer"]
    # scrambling the test labels changes nothing about the choice: the test split is never looked at
    code, out, _ = run(main, [args[0], str(_permuted_test_labels(layers_cache, tmp_path)), *args[1:]], capsys)
    scrambled = json.loads(out)
    assert scrambled["layer_scores"] == result["layer_scores"] and scrambled["layer"] == result["layer"]
    assert scrambled["test_accuracy"] != result["test_accuracy"]


def test_joined_layers_are_scaled_to_equal_variance(layers_cache):
    features, labels, _ = open_cache(layers_cache).load("train")
    selector = LayerSelector(open_cache(layers_cache).layout, "stage3+penultimate").fit(features, labels)
    joined = selector.transform(features)
    assert joined.shape == (60, 40 + 1280)
    assert joined[:, :40].var(0).sum() == pytest.approx(1, rel=1e-3)
    assert joined[:, 40:].var(0).sum() == pytest.approx(1, rel=1e-3)


def test_predict_reextracts_every_layer_the_model_was_trained_on(layers_cache, tmp_path, sample_dir, capsys):
    from classify.__main__ import main

    code, out, _ = run(main, ["svm", str(layers_cache), "--layers", "stage4,penultimate", "--cv", "2", "--n-jobs",
                              "1", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["layer"] == "stage4+penultimate" and ".stage4+penultimate.svm" in result["model_file"]
    features, labels, ids = open_cache(layers_cache).load("test")
    code, out, _ = run(main, ["predict", result["model_file"], *(str(sample_dir / i) for i in ids[:4])], capsys)
    names = open_cache(layers_cache).info.class_names
    from classify.models import load_model

    expected = [names[i] for i in load_model(result["model_file"])[0].predict(features[:4])]
    assert code == 0 and [line.split("\t")[1] for line in out.splitlines()] == expected


@pytest.mark.parametrize("argv, message", [
    (["logreg", "--layers", "stage9"], "this cache has no layer stage9; it holds stage1, stage2"),
    (["logreg", "--layers", "best"], None),
])
def test_bad_layer_is_one_line_and_exit_2(argv, message, layers_cache, lite_cache, capsys):
    from classify.__main__ import main

    target = layers_cache if message else lite_cache
    code, _, err = run(main, [argv[0], str(target), *argv[1:]], capsys)
    assert code == 2 and err.count("\n") == 1
    assert (message or "--layers best needs a cache with several layers") in err


def test_unknown_extract_layer_names_the_available_ones(tmp_path, sample_dir, capsys):
    from extract.__main__ import main

    code, out, _ = run(main, ["resnet18", "--layers", "list"], capsys)
    assert code == 0 and "stage2       layer1.1" in out

    code, _, err = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), *QUICK,
                              "--layers", "stage2,conv9"], capsys)
    assert code == 2 and "unknown layer conv9; this backbone has stage1, stage2" in err
    assert list(tmp_path.iterdir()) == []


def test_the_old_layer_spelling_still_works_with_a_note(layers_cache, capsys):
    from classify.__main__ import main

    code, out, err = run(main, ["logreg", str(layers_cache), "--layer", "stage4+penultimate", "--grid", "C=0.1",
                                "--cv", "2", "--n-jobs", "1", "--json"], capsys)
    assert code == 0 and json.loads(out)["layer"] == "stage4+penultimate"
    assert "--layer is now --layers" in err
