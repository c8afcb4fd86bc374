import gc
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torchvision
from conftest import QUICK, REPO, run

from extract.__main__ import main
from extract.backbones import create_backbone
from extract.datasets import copies_across_splits, hold_out, load_image, resolve_dataset
from extract.errors import UsageError, exit_cli
from extract.features import ExtractionSettings, Extractor, _megapixels
from extract.optimize import StaticSamePadConv, fold_batch_norms, static_same_padding
from extract.preprocess import resize_or_defer, stack_at_crop
from extract.runtime import default_batch_size, default_workers
from extract.store import open_cache


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cache_file_describes_itself(lite_cache, sample_dir):
    with h5py.File(lite_cache, "r") as file:
        attrs = dict(file.attrs)
        assert attrs["complete"] and attrs["backbone"] == "efficientnet_lite0"
        assert attrs["layer"] == "penultimate" and attrs["pool"] == "avg" and attrs["image_size"] == 96
        assert len(attrs["weights_sha256"]) == 64 and len(attrs["dataset_fingerprint"]) == 64
        transform = json.loads(attrs["transform"])
        assert transform["mean"] == [0.5, 0.5, 0.5] and transform["orientation"] == "EXIF orientation applied"
        assert "torch" in json.loads(attrs["versions"])
        assert not attrs["compiled"]  # a few images: eager (compile pays only from COMPILE_MIN_IMAGES)
        class_names = json.loads(attrs["class_names"])
        assert class_names == sorted(p.name for p in (sample_dir / "train").iterdir())
        for split in ("train", "test"):
            group = file[split]
            assert group["features"].shape == (60, 1280) and group["features"].dtype == np.float32
            assert group["features"].chunks is not None
            assert list(group["labels"][...]) == [c for c in range(10) for _ in range(6)]
            ids = group["ids"].asstr()[...]
            assert ids[0] == f"{split}/airplane/0000.jpg" and all(i.split("/")[1] == class_names[label]
                                                                 for i, label in zip(ids, group["labels"], strict=True))
            assert np.isfinite(group["features"][...]).all()


def test_cached_features_equal_a_direct_forward_pass_in_order(lite_cache, sample_dir):
    cache = open_cache(lite_cache)
    features, _, ids = cache.load("test")
    extractor = Extractor(create_backbone("efficientnet_lite0", image_size=96), "avg", ExtractionSettings())
    assert not extractor.prepared  # building one (a cache hit needs no more) leaves the weights alone
    picked = [0, 17, 59]
    direct = extractor.image_features([load_image(sample_dir / ids[i], ids[i]) for i in picked])
    assert extractor.prepared
    np.testing.assert_allclose(direct, features[picked], rtol=1e-4, atol=1e-4)


def test_the_model_handed_to_an_extractor_is_left_as_it_was(sample_dir):
    """The extractor folds batch norms, makes 'same' paddings static and changes the memory format, on its own copy:
    the caller's model keeps its modules, its weights and its outputs."""
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    modules = [(name, type(module)) for name, module in backbone.model.named_modules()]
    weights = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = backbone.model(probe)
    extractor = Extractor(backbone, "avg", ExtractionSettings(compile="off"))
    extractor.image_features([load_image(sample_dir / "test" / "cat" / "0000.jpg", "cat")])
    assert extractor.prepared
    assert [(name, type(module)) for name, module in backbone.model.named_modules()] == modules
    assert all(torch.equal(weights[k], v) for k, v in backbone.model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(backbone.model(probe), before)


def test_flip_is_an_entry_of_its_own_averaging_each_image_with_its_mirror_and_predict_does_the_same(
        lite_cache, sample_dir, tmp_path, capsys):
    from PIL import Image

    from classify.__main__ import main as classify_main
    from classify.models import load_model

    argv = ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), *QUICK, "--flip"]
    code, out, _ = run(main, argv, capsys)
    flipped, plain = open_cache(out.strip()), open_cache(lite_cache)
    assert code == 0 and "__penultimate-avg-flip__96px__" in flipped.path.name and "-flip" not in lite_cache.name
    assert flipped.info.transform["flip"] and "flip" not in plain.info.transform
    features, _, ids = flipped.load("test")
    picked = [0, 17, 59]
    images = [load_image(sample_dir / ids[i], ids[i]) for i in picked]
    backbone = create_backbone("efficientnet_lite0", image_size=96)
    extractor = Extractor(backbone, "avg", ExtractionSettings())
    pixels = stack_at_crop([resize_or_defer(image, backbone.preprocess) for image in images], backbone.preprocess)
    expected = (extractor.batch_features(pixels) + extractor.batch_features(pixels.flip(-1))) / 2
    np.testing.assert_allclose(features[picked], expected, rtol=1e-4, atol=1e-4)
    # the mirror image of the file, resized on its own: the same to the resize filter's rounding
    mirrored = extractor.image_features([image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in images])
    assert row_cosine(features[picked], (extractor.image_features(images) + mirrored) / 2).min() > 0.9999
    assert row_cosine(features[picked], plain.load("test")[0][picked]).max() < 0.9999
    code, out, err = run(main, argv, capsys)
    assert code == 0 and out.strip() == str(flipped.path) and "reusing" in err
    # a head trained on it predicts new images from their features averaged the same way
    code, out, _ = run(classify_main, ["logreg", str(flipped.path), "--grid", "C=0.01", "--cv", "2", "--n-jobs", "1",
                                       "--json"], capsys)
    model_file = json.loads(out)["model_file"]
    model, metadata = load_model(model_file)
    code, out, _ = run(classify_main, ["predict", model_file, *(str(sample_dir / ids[i]) for i in picked)], capsys)
    assert code == 0 and [float(line.split("\t")[2]) for line in out.splitlines()] == pytest.approx(
        model.predict_proba(features[picked]).max(1), abs=6e-4)


def test_batch_size_defaults_to_the_device_and_a_given_one_is_kept():
    backbone = create_backbone("efficientnet_lite0", image_size=64)
    assert Extractor(backbone, "avg", ExtractionSettings(device="cpu")).settings.batch_size == 16
    assert Extractor(backbone, "avg", ExtractionSettings(batch_size=5)).settings.batch_size == 5
    assert default_batch_size(torch.device("cuda")) == 64


def test_decoding_workers_default_to_the_device_and_give_the_same_features(lite_cache, sample_dir, tmp_path,
                                                                          monkeypatch, capsys):
    def unasked() -> float:
        raise AssertionError("the image size decides nothing here, so no image should be decoded for it")

    for cores, on_cpu, on_cpu_large, on_gpu in ((2, 0, 2, 2), (4, 3, 3, 4), (32, 8, 8, 8)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert (default_workers(torch.device("cpu")), default_workers(torch.device("cpu"), lambda: 1.2),
                default_workers(torch.device("cuda"), unasked)) == (on_cpu, on_cpu_large, on_gpu)
        if cores > 2:
            assert default_workers(torch.device("cpu"), unasked) == on_cpu
    monkeypatch.undo()
    assert _megapixels(resolve_dataset(str(sample_dir)).splits["test"], 0) == 32 * 32 / 1e6  # read from the images
    # the path machines with more than 2 cores take: decoding, resizing and enlarging in 2 worker processes
    argv = ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), *QUICK]
    code, out, _ = run(main, [*argv, "--workers", "2"], capsys)
    assert code == 0
    ours, theirs = open_cache(out.strip()), open_cache(lite_cache)
    for split in ("train", "test"):
        (a, labels_a, ids_a), (b, labels_b, ids_b) = ours.load(split), theirs.load(split)
        assert list(ids_a) == list(ids_b) and np.array_equal(labels_a, labels_b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rerun_reuses_the_cache_and_force_recomputes(lite_cache, sample_dir, capsys):
    before = lite_cache.stat().st_mtime_ns
    code, out, err = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(lite_cache.parent), *QUICK],
                         capsys)
    assert code == 0 and "reusing" in err and out.strip() == str(lite_cache)
    assert lite_cache.stat().st_mtime_ns == before
    code, out, _ = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(lite_cache.parent), *QUICK,
                              "--json"], capsys)
    assert code == 0 and json.loads(out) == {"entries": [{"cache_file": str(lite_cache), "reused": True, "images": 0,
                                                          "seconds": 0.0, "images_per_second": 0.0}]}
    code, out, err = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(lite_cache.parent),
                                *QUICK, "--force", "--limit-per-class", "2"], capsys)
    assert code == 0 and "extracting" in err


def test_a_changed_dataset_computes_only_the_images_that_changed(tmp_path, sample_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    args = ["efficientnet_lite0", str(data), *QUICK, "--limit-per-class", "3"]
    code, out, _ = run(main, [*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    first = open_cache(out.strip())
    os.utime(data / "train" / "cat" / "0000.jpg", ns=(1, 1))  # touched: the same pixels, but it may have changed
    edited = data / "train" / "dog" / "0001.jpg"
    load_image(edited, "dog").transpose(0).save(edited)  # mirrored
    (data / "test" / "bird" / "0000.jpg").rename(data / "test" / "frog" / "0000b.jpg")  # relabelled, so bird 0003
    # comes in and frog 0002 drops out at 3 per class
    code, out, err = run(main, [*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0 and f"{first.path.name} was made from an earlier state of this dataset: taking the features " \
        "of the 56 of 60 image files it holds unchanged" in err and "(4 images in" in err
    assert f"the earlier entry {first.path} (" in err and "is kept: remove it once nothing reads it" in err
    second = open_cache(out.strip())
    assert second.path != first.path and second.info.rows_reused_from == first.path.name
    code, out, _ = run(main, [*args, "--cache-dir", str(tmp_path / "fresh")], capsys)
    fresh = open_cache(out.strip())
    for split in ("train", "test"):
        features, labels, ids = second.load(split)
        expected, expected_labels, expected_ids = fresh.load(split)
        assert list(ids) == list(expected_ids) and list(labels) == list(expected_labels)
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    old, new = first.load("train"), second.load("train")
    row = list(new[2]).index("train/dog/0001.jpg")
    assert row_cosine(old[0][row:row + 1], new[0][row:row + 1])[0] < 0.999  # computed again, not taken

    with h5py.File(first.path, "a") as file:  # as entries of earlier versions were written: no file stamps
        for split in ("train", "test"):
            del file[split]["stamps"]
    second.path.unlink()
    code, _, err = run(main, [*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0 and f"not reusing {first.path.name}: its dataset fingerprint differs and it holds no image " \
        "file unchanged" in err and "(60 images in" in err

    with h5py.File(first.path, "a") as file:  # damaged after it was written
        file["train"].create_dataset("stamps", data=np.zeros((30, 2), dtype=np.int64))
        del file["train"].attrs["skipped"]
    second.path.unlink()
    code, _, err = run(main, [*args, "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0 and f"not reusing {first.path.name}: it cannot be read (" in err and "(60 images in" in err


def test_torchvision_backbone_with_random_and_local_weights(tmp_path, sample_dir, capsys):
    import torch

    args = [str(sample_dir), "--cache-dir", str(tmp_path), "--image-size", "64", "--limit-per-class", "2",
            "--workers", "0"]
    code, out, _ = run(main, ["resnet18", *args, "--weights", "none"], capsys)
    assert code == 0
    random_cache = open_cache(out.strip())
    assert random_cache.info.weights == "none" and random_cache.load("train")[0].shape == (20, 512)

    state = tmp_path / "resnet18-mine.pth"
    torch.save(create_backbone("resnet18", weights="none").model.state_dict(), state)
    code, out, _ = run(main, ["resnet18", *args, "--weights", str(state), "--pool", "max"], capsys)
    assert code == 0
    local_cache = open_cache(out.strip())
    assert local_cache.info.weights == str(state.resolve()) and local_cache.info.pool == "max"
    assert "resnet18-mine" in local_cache.path.name


def test_digits_ships_offline():
    dataset = resolve_dataset("digits", limit_per_class=3)
    assert len(dataset.splits["train"]) == 30 and dataset.splits["test"].image(0).mode == "RGB"


@pytest.mark.parametrize("argv, message", [
    (["resnet81", "examples/cifar10-mini"], "unknown backbone 'resnet81'.*did you mean"),
    (["efficientnet_lite0", "cifar11"], "unknown dataset 'cifar11'.*did you mean cifar10"),
    (["efficientnet_lite0", "no/such/folder"], "does not exist"),
    (["efficientnet_lite0", "README.md"], r"README\.md is a file, not a dataset folder.*named \*\.csv or \*\.tsv"),
    (["efficientnet_lite0", "examples/cifar10-mini", "--weights", "IMAGENET9"], "has weights 'default', 'none'"),
    (["resnet18", "examples/cifar10-mini", "--weights", "IMAGENET9"], "has no weights 'IMAGENET9'"),
    (["efficientnet_lite0", "examples/cifar10-mini", "--weights", "missing.pth"], "missing.pth does not exist"),
    (["densenet121", "examples/cifar10-mini", "--weights", "none", "--pool", "max"], "only --pool avg"),
    (["efficientnet_lite0", "examples/cifar10-mini", "--workers", "-1"], "--workers must be 0"),
    (["maxvit_t", "--weights", "none", "--image-size", "96", "examples/cifar10-mini"],  # options before DATASET
     "maxvit_t does not take 96 px input"),
    (["vit_b_16", "examples/cifar10-mini", "--weights", "none", "--image-size", "100"], "a multiple of 16"),
    (["efficientnet_lite0", "examples/cifar10-mini", "--image-size", "0"], "--image-size 0 is too small"),
    (["timm/vit_tiny_patch16_224", "examples/cifar10-mini", "--weights", "none", "--image-size", "-3"],
     "--image-size -3 is too small"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run(main, [*argv, "--cache-dir", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    import re

    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["efficientnet_lite0", "examples/cifar10-mini"], ["--list"]])
def test_a_cache_dir_that_cannot_be_a_folder_is_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("kept")
    code, _, err = run(main, [*argv, "--cache-dir", str(blocker / "cache")], capsys)
    assert code == 2 and err == f"error: --cache-dir {blocker / 'cache'} cannot be a folder: a file is in its way; " \
                                "give a folder path\n"
    assert blocker.read_text() == "kept"


@pytest.mark.parametrize("layout, message", [
    ({"train": ["cat", "dog"], "test": ["cat", "cow"]}, "class folders differ between train/ and test/"),
    ({"train": ["cat", "dog", "empty"], "test": ["cat", "dog", "empty"]}, "class folder(s) empty in"),
    ({"train": ["cat"], "test": ["cat"]}, "holds 1 class folder(s); a classifier needs at least 2"),
])
def test_folder_layout_mistakes_are_named(layout, message, tmp_path, sample_dir, capsys):
    for split, classes in layout.items():
        for name in classes:
            (tmp_path / "photos" / split / name).mkdir(parents=True)
            if name != "empty":
                shutil.copy(sample_dir / "train" / "cat" / "0000.jpg", tmp_path / "photos" / split / name / "a.jpg")
    code, _, err = run(main, ["efficientnet_lite0", str(tmp_path / "photos"), "--cache-dir", str(tmp_path / "c")],
                       capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "c").exists()


def test_a_plain_folder_of_photos_is_told_how_to_label_them(tmp_path, sample_dir, capsys):
    (tmp_path / "photos").mkdir()
    for name in ("a.jpg", "b.JPG"):
        shutil.copy(sample_dir / "train" / "cat" / "0000.jpg", tmp_path / "photos" / name)
    (tmp_path / "photos" / "._a.jpg").write_bytes(b"\0")  # macOS's note beside a copied photo: no image
    code, _, err = run(main, ["efficientnet_lite0", str(tmp_path / "photos")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "holds 2 images but 0 class folder(s)" in err and "/<class>/" in err and "Extractor.image_features" in err


def test_split_folder_missing(tmp_path, capsys):
    (tmp_path / "photos" / "val" / "a").mkdir(parents=True)
    code, _, err = run(main, ["efficientnet_lite0", str(tmp_path / "photos")], capsys)
    assert code == 2 and "has a val/ but no train/ folder" in err
    (tmp_path / "photos" / "val").rename(tmp_path / "photos" / "train")
    code, _, err = run(main, ["efficientnet_lite0", str(tmp_path / "photos")], capsys)
    assert code == 2 and "holds 1 class folder(s); a classifier needs at least 2" in err


@pytest.mark.parametrize("layout", ["<class>", "train/<class>"])
def test_a_folder_without_a_test_split_holds_out_a_quarter_of_each_class(layout, sample_dir, tmp_path, capsys):
    root = tmp_path / "photos"
    labelled = root / "train" if layout == "train/<class>" else root
    shutil.copytree(sample_dir / "train", labelled)  # 30 images in each of 10 classes
    code, out, err = run(main, ["efficientnet_lite0", str(root), "--cache-dir", str(tmp_path / "c"),
                                "--image-size", "64", "--workers", "0"], capsys)
    assert code == 0 and "25% of each class held out as the test split" in err
    cache = open_cache(out.strip())
    train, test = cache.load("train"), cache.load("test")
    assert np.bincount(train[1]).tolist() == [22] * 10 and np.bincount(test[1]).tolist() == [8] * 10
    assert not set(train[2]) & set(test[2]) and len(set(train[2]) | set(test[2])) == 300

    again = resolve_dataset(str(root))
    assert again.splits["test"].ids == list(test[2]) and again.fingerprint == cache.info.dataset_fingerprint
    # one more image in a class: at most one earlier file changes sides
    shutil.copy(labelled / "cat" / "0000.jpg", labelled / "cat" / "extra.jpg")
    grown = resolve_dataset(str(root)).splits["test"].ids
    assert len(set(test[2]) - set(grown)) <= 1


def test_hidden_files_are_skipped_and_other_files_counted(sample_dir, tmp_path, capsys):
    root = tmp_path / "photos"
    shutil.copytree(sample_dir / "test", root, ignore=shutil.ignore_patterns("0005.jpg", "0006.jpg", "0007.jpg",
                                                                                "0008.jpg", "0009.jpg"))
    (root / "cat" / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07 macOS AppleDouble, not a JPEG")
    (root / "cat" / ".thumbnails").mkdir()
    shutil.copy(root / "cat" / "0000.jpg", root / "cat" / ".thumbnails" / "0000.jpg")
    for name in ("IMG_0001.AAE", "IMG_0001.MOV", "IMG_0002.aae", "notes.txt", "README"):
        (root / "dog" / name).write_text("not an image")
    code, out, err = run(main, ["efficientnet_lite0", str(root), "--cache-dir", str(tmp_path / "c"),
                                "--image-size", "64", "--workers", "0"], capsys)
    assert code == 0, err
    assert "left out 5 files that are not images this tool reads: .aae (2), .mov (1), .txt (1), no suffix (1)" in err
    cache = open_cache(out.strip())
    ids = [*cache.load("train")[2], *cache.load("test")[2]]
    assert len(ids) == 50 and not any("/." in sample for sample in ids)


def test_test_images_copied_from_train_are_named_and_flagged_to_the_head(sample_dir, tmp_path, capsys):
    from classify.__main__ import main as classify_main

    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    shutil.copy(root / "train" / "cat" / "0003.jpg", root / "test" / "cat" / "0000.jpg")
    shutil.copy(root / "train" / "dog" / "0004.jpg", root / "test" / "dog" / "0001.jpg")
    args = ["efficientnet_lite0", str(root), "--cache-dir", str(tmp_path / "c"), *QUICK]
    code, out, err = run(main, args, capsys)
    assert code == 0 and "warning: 2 test image(s) are byte-for-byte copies of train images " \
        "(test/cat/0000.jpg = train/cat/0003.jpg, ...)" in err
    assert open_cache(out.strip()).info.test_copies_of_train == 2
    code, _, err = run(classify_main, ["logreg", out.strip(), "--cv", "2", "--n-jobs", "1"], capsys)
    assert code == 0 and "warning: 2 test image(s) of this cache are byte-for-byte copies" in err
    assert copies_across_splits(resolve_dataset(str(sample_dir))) == []  # the sample itself has none


def test_a_file_the_copy_check_cannot_read_is_left_to_extraction_to_name(sample_dir, monkeypatch):
    import extract.datasets.files

    def unreadable(path, limit=-1):
        raise PermissionError(f"[Errno 13] Permission denied: '{path}'")

    monkeypatch.setattr(extract.datasets.files, "_digest", unreadable)
    assert copies_across_splits(resolve_dataset(str(sample_dir))) == []


def test_large_files_are_copies_only_if_every_byte_is_the_same(tmp_path):
    """Uncompressed images of one size share their size and may share their first 64 KiB: the rest decides."""
    from PIL import Image

    top = np.zeros((200, 300, 3), np.uint8)  # 180 KB as BMP; the first 64 KiB (bottom rows, in BMP) alike
    for split, name, fill in (("train", "a", 1), ("train", "b", 2), ("test", "a", 1), ("test", "b", 3)):
        (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
        image = top.copy()
        image[:60] = fill  # BMP stores rows bottom-up: these are its last bytes
        Image.fromarray(image).save(tmp_path / split / name / "x.bmp")
    assert copies_across_splits(resolve_dataset(str(tmp_path))) == [("test/a/x.bmp", "train/a/x.bmp")]


def test_holding_out_needs_two_images_per_class():
    with pytest.raises(UsageError, match="class b holds 1 image; holding out test images needs 2 or more"):
        hold_out({"a": ["a/1.jpg", "a/2.jpg"], "b": ["b/1.jpg"]})


def test_cli_exit_code_and_no_traceback_as_a_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "extract", "resnet81", "examples/cifar10-mini",
                             "--cache-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "unknown backbone" in result.stderr


def test_exit_cli_exits_with_the_code_and_sets_the_imports_aside_from_collections():
    def bad_input(_argv):
        raise UsageError("no such thing")

    try:
        with pytest.raises(SystemExit) as exit_info:
            exit_cli(bad_input)
        assert exit_info.value.code == 2 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the test process goes on


def test_help_explains_the_commands():
    result = subprocess.run([sys.executable, "-m", "extract", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "--pool" in result.stdout and "python -m classify svm" in result.stdout


def test_bf16_is_its_own_cache_entry_and_close_to_fp32(lite_cache, sample_dir, capsys):
    code, out, _ = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(lite_cache.parent), *QUICK,
                              "--precision", "bf16"], capsys)
    assert code == 0 and out.strip() != str(lite_cache)
    fast, exact = open_cache(out.strip()), open_cache(lite_cache)
    assert fast.info.precision == "bf16" and exact.info.precision == "fp32"
    a, b = fast.load("test")[0], exact.load("test")[0]
    assert row_cosine(a, b).min() > 0.97 and not np.array_equal(a, b)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_backbone_gives_the_same_features_and_only_when_it_pays(sample_dir, precision):
    ids = [f"test/{name}/0000.jpg" for name in ("cat", "dog", "ship")]
    images = [load_image(sample_dir / i, i) for i in ids]
    settings = {"batch_size": 4, "workers": 0, "precision": precision}
    eager = Extractor(create_backbone("efficientnet_lite0", image_size=64), "avg",
                      ExtractionSettings(**settings, compile="off"), "stage3,penultimate")
    assert eager.compile_if_it_pays(10**6) is None and not eager.compiled
    auto = Extractor(create_backbone("efficientnet_lite0", image_size=64), "avg", ExtractionSettings(**settings),
                     "stage3,penultimate")
    assert auto.compile_if_it_pays(100) is None  # too few images for the start-up time to pay back
    with torch._dynamo.config.patch(error_on_recompile=True):  # compiled once, for every batch after
        assert "one graph" in auto.compile_if_it_pays(10**6) and auto.compiled
        auto.batch_features(torch.zeros(4, 3, 64, 64, dtype=torch.uint8))  # a full batch, as the data loader gives it
        compiled = auto.image_features(images)  # a short one
    reference = eager.image_features(images)
    if precision == "fp32":
        np.testing.assert_allclose(compiled, reference, rtol=1e-4, atol=1e-4)
    else:  # other kernels, each rounding to bf16 on its own
        assert row_cosine(compiled, reference).min() > 0.99 and not np.array_equal(compiled, reference)


def test_each_extractor_in_a_process_is_compiled_for_itself(sample_dir):
    """A process that compiles several extractors: each one is compiled, none falls back to eager unsaid."""
    images = [load_image(sample_dir / "test/cat/0000.jpg", "cat")]
    settings = ExtractionSettings(batch_size=2, workers=0, compile="on")
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for name in ("resnet18", "mobilenet_v3_small"):
            extractor = Extractor(create_backbone(name, "none", image_size=64), "avg", settings)
            eager = Extractor(create_backbone(name, "none", image_size=64), "avg", ExtractionSettings(batch_size=2))
            eager.model.load_state_dict(extractor.model.state_dict())
            assert "one graph" in extractor.compile_if_it_pays(10**6)
            np.testing.assert_allclose(extractor.image_features(images), eager.image_features(images),
                                       rtol=1e-4, atol=1e-4)


def test_a_backbone_that_does_not_trace_is_compiled_block_by_block(sample_dir, monkeypatch):
    ids = [f"test/{name}/0000.jpg" for name in ("cat", "dog")]
    images = [load_image(sample_dir / i, i) for i in ids]
    settings = ExtractionSettings(batch_size=4, workers=0)
    eager = Extractor(create_backbone("efficientnet_lite0", image_size=64), "avg", settings)
    blocks = Extractor(create_backbone("efficientnet_lite0", image_size=64), "avg", settings)
    monkeypatch.setattr(blocks.model, "as_graph", lambda: None)
    limit = torch._dynamo.config.recompile_limit
    assert "blocks" in blocks.compile_if_it_pays(10**6) and blocks.compiled
    np.testing.assert_allclose(blocks.image_features(images), eager.image_features(images), rtol=1e-4, atol=1e-4)
    assert torch._dynamo.config.recompile_limit == limit  # a graph per block, without changing the process's limit


FAULTS = """
import resource, sys, torch
import extract.features  # the extractor's imports, as in a run
from extract.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(3):  # the heap grows to its steady size (an aligned block may not fit the freed one the first times)
    torch.ones(64 << 20, dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(64 << 20, dtype=torch.uint8)  # one batch's activations, freed again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_batch_memory_is_reused_without_page_faults():
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=REPO, capture_output=True, text=True)
        return int(result.stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 5 * (64 << 20) // 4096 // 2  # every batch pages its memory in again
    assert kept < default / 3


def _with_random_norm_statistics(model):
    """Pretrained-looking batch norms: untouched ones (mean 0, var 1, identity affine) would fold trivially."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                          (module.weight, 0.5, 1.5), (module.bias, -0.5, 0.5)):
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name, folded, left", [("resnet18", 20, 0), ("densenet121", 59, 62),
                                                ("efficientnet_lite0", 49, 0)])
def test_batch_norms_fold_into_their_convolutions_only_where_the_conv_feeds_them(name, folded, left):
    """DenseNet: the norms that read a concatenation stay. Lite0: timm's BatchNormAct2d (norm and ReLU6 in one
    module) gives up its norm and keeps its activation."""
    model = (create_backbone(name, "none").model if name.startswith("efficientnet")
             else torchvision.models.get_model(name, weights=None))
    model = _with_random_norm_statistics(model)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(images)
        assert fold_batch_norms(model) == folded
        torch.testing.assert_close(model(images), before, rtol=1e-4, atol=1e-4)
    assert sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules()) == left


@pytest.mark.parametrize("size", [64, 65])
def test_static_same_padding_computes_what_conv2d_same_does(size):
    """tf_efficientnet_lite0's five stride-2 convolutions: uneven padding at even sizes, even at odd ones."""
    model = create_backbone("efficientnet_lite0", "none", image_size=size).model
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.forward_features(images)
        assert static_same_padding(model, size) == 5
        torch.testing.assert_close(model.forward_features(images), before, rtol=1e-5, atol=1e-5)
        other = torch.randn(2, 3, size + 7, size + 7, generator=torch.Generator().manual_seed(3))
        assert model.conv_stem(other).shape[-1] == -(-(size + 7) // 2)  # another size: the original module
    stem = model.conv_stem
    assert isinstance(stem, StaticSamePadConv) and stem.kernel_size == ((4, 4) if size % 2 == 0 else (3, 3))


class _ConvReadTwice(torch.nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(3, 4, 3, bias=bias), torch.nn.BatchNorm2d(4)

    def forward(self, images):
        out = self.conv(images)
        return self.norm(out) + out  # the conv's output has a second reader: folding would change it


@pytest.mark.parametrize("bias", [False, True])
def test_a_fold_that_would_change_the_output_is_undone(bias):
    model = _with_random_norm_statistics(_ConvReadTwice(bias))
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        assert fold_batch_norms(model) == 0
    assert (model.conv.bias is not None) == bias and state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])
