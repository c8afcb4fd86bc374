"""Ensembles: several cache entries of the same images, read side by side and matched by image id."""

import json
import shutil

import numpy as np
import pytest
from conftest import QUICK, placeholder_info, run

from classify.__main__ import main as classify_main
from classify.models import load_model
from extract.ensemble import member_labels, open_ensemble
from extract.errors import UsageError
from extract.store import CacheWriter, SplitRows, open_cache


def write_entry(path, features: dict, labels: dict, ids: dict, **info):
    """A complete cache entry holding exactly these rows."""
    splits = {split: SplitRows(list(ids[split]), np.asarray(labels[split])) for split in features}
    dim = next(iter(features.values())).shape[1]
    writer = CacheWriter(path, placeholder_info(class_names=["a", "b", "c"], **info), splits, dim)
    for split, rows in features.items():
        writer.write(split, 0, rows.astype(np.float32))
    return writer.finish()


@pytest.fixture
def two_entries(tmp_path):
    rng = np.random.default_rng(0)
    ids = {split: [f"{split}/{n:03d}.jpg" for n in range(count)] for split, count in (("train", 30), ("test", 12))}
    labels = {split: np.arange(len(ids[split])) % 3 for split in ids}
    first = {split: rng.normal(size=(len(ids[split]), 4)) for split in ids}
    second = {split: rng.normal(size=(len(ids[split]), 6)) for split in ids}
    a = write_entry(tmp_path / "a.h5", first, labels, ids, backbone="net_a")
    # the second entry holds the same images in another order
    order = {split: rng.permutation(len(ids[split])) for split in ids}
    b = write_entry(tmp_path / "b.h5", {s: second[s][order[s]] for s in ids}, {s: labels[s][order[s]] for s in ids},
                    {s: [ids[s][i] for i in order[s]] for s in ids}, backbone="net_b")
    return a, b, first, second, labels, ids


def test_ensemble_is_the_members_arrays_side_by_side_matched_by_image(two_entries):
    a, b, first, second, labels, ids = two_entries
    ensemble = open_ensemble([a, b])
    for split in ("train", "test"):
        features, got_labels, got_ids = ensemble.load(split)
        np.testing.assert_array_equal(features, np.hstack([first[split], second[split]]).astype(np.float32))
        np.testing.assert_array_equal(got_labels, labels[split])
        assert list(got_ids) == ids[split]
    assert ensemble.layout == {"net_a/x": (0, 4), "net_b/x": (4, 10)}
    assert ensemble.layer_key("x") == "net_a/x+net_b/x"


def test_entries_of_other_images_labels_or_classes_are_refused(two_entries, tmp_path):
    a, _, first, second, labels, ids = two_entries
    fewer = {split: ids[split][:-1] for split in ids}
    c = write_entry(tmp_path / "c.h5", {s: second[s][:-1] for s in ids}, {s: labels[s][:-1] for s in ids}, fewer,
                    backbone="net_c")
    with pytest.raises(UsageError, match="different train images"):
        open_ensemble([a, c]).load("train")
    relabelled = write_entry(tmp_path / "d.h5", second, {s: (labels[s] + 1) % 3 for s in ids}, ids, backbone="net_d")
    with pytest.raises(UsageError, match="labels the train images otherwise"):
        open_ensemble([a, relabelled]).load("train")
    other_data = write_entry(tmp_path / "e.h5", second, labels, ids, backbone="net_e", dataset_fingerprint="other")
    with pytest.raises(UsageError, match="not of the same images"):
        open_ensemble([a, other_data])
    with pytest.raises(UsageError, match="given twice"):
        open_ensemble([a, a])


def test_member_labels_tell_members_of_one_backbone_apart():
    infos = [placeholder_info(backbone="lite0", image_size=224), placeholder_info(backbone="lite0", image_size=260),
             placeholder_info(backbone="timm/resnet50")]
    assert member_labels(infos) == ["lite0-224px", "lite0-260px", "timm-resnet50"]
    assert member_labels([placeholder_info(backbone="n"), placeholder_info(backbone="n")]) == ["n-0", "n-1"]


def test_mismatched_ensemble_on_the_command_line_is_one_line_and_writes_nothing(two_entries, tmp_path, capsys):
    a, _, first, second, labels, ids = two_entries
    other = write_entry(tmp_path / "other.h5", second, labels, ids, backbone="net_o", dataset_fingerprint="other")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(classify_main, ["logreg", str(a), str(other), "--n-jobs", "1"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "not of the same images" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.fixture(scope="module")
def lite_pair(lite_cache, sample_dir, tmp_path_factory):
    """Two real members of the sample: Lite0 (the session's cache) and Lite1, in one folder of their own."""
    from extract.__main__ import main as extract_main
    from extract.errors import run_cli

    folder = tmp_path_factory.mktemp("ensemble")
    shutil.copy(lite_cache, folder / lite_cache.name)
    # one command for both members: Lite0's entry is reused, Lite1's computed
    assert run_cli(extract_main, ["efficientnet_lite0,efficientnet_lite1", str(sample_dir), "--cache-dir",
                                  str(folder), *QUICK]) == 0
    return sorted(folder.glob("*.h5"))


def test_saved_ensemble_head_predicts_a_new_image_from_both_members_features(lite_pair, sample_dir, capsys):
    from extract.backbones import create_backbone
    from extract.features import ExtractionSettings, Extractor

    assert len(lite_pair) == 2
    code, out, _ = run(classify_main, ["logreg", *map(str, lite_pair), "--grid", "C=0.01", "--cv", "2", "--n-jobs",
                                       "1", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["members"] == [str(p) for p in lite_pair] and result["feature_dim"] == 1280 + 1280
    model, metadata = load_model(result["model_file"])
    assert [m["backbone"] for m in metadata["provenance"]] == ["efficientnet_lite0", "efficientnet_lite1"]

    image = str(sample_dir / "test" / "cat" / "0000.jpg")
    members = []
    for path in lite_pair:  # each member's features as its own cache entry was made, by hand
        info = open_cache(path).info
        members.append(Extractor(create_backbone(info.backbone, None, info.image_size), info.pool,
                                 ExtractionSettings(device="cpu")).image_features([image]))
    expected = model.predict_proba(np.hstack(members))[0]
    code, out, _ = run(classify_main, ["predict", result["model_file"], image], capsys)
    assert code == 0
    _, label, probability = out.strip().split("\t")
    assert label == metadata["class_names"][int(expected.argmax())]
    assert float(probability) == pytest.approx(expected.max(), abs=1e-3)


def test_ensemble_head_scores_its_test_split_as_the_joined_arrays_do(lite_pair):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from classify.train import train_head

    result = train_head([str(p) for p in lite_pair], "logreg", "C=0.01", cv=2, n_jobs=1, log=lambda m: None)
    blocks = {split: [open_cache(p).load(split) for p in lite_pair] for split in ("train", "test")}
    for split in blocks:  # the sample's entries list images in the same order: the arrays join as they are
        assert all(list(ids) == list(blocks[split][0][2]) for _, _, ids in blocks[split])

    train = np.hstack([x for x, _, _ in blocks["train"]])  # the linear head standardises every column
    scaler = StandardScaler().fit(train)
    reference = LogisticRegression(C=0.01, tol=1e-3, max_iter=2000).fit(scaler.transform(train), blocks["train"][0][1])
    predicted = reference.predict(scaler.transform(np.hstack([x for x, _, _ in blocks["test"]])))
    assert result.test_accuracy == pytest.approx(np.mean(predicted == blocks["test"][0][1]), abs=1 / 60)
