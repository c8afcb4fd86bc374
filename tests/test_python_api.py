"""The Python blocks of docs/python.md and the README, run as they stand, so that what they show stays true."""

import ast
import re
import shutil

import numpy as np
import pytest

from tests.conftest import REPO, SAMPLE


def python_block(page: str = "docs/python.md", heading: str = "## The whole API in one notebook cell") -> str:
    section = (REPO / page).read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def readme_python_block() -> str:
    return python_block("README.md", "## From Python")


def test_the_python_pages_block_and_the_readmes_run_and_give_what_they_say(tmp_path, monkeypatch, capsys):
    shutil.copytree(SAMPLE, tmp_path / "examples" / "cifar10-mini")
    monkeypatch.chdir(tmp_path)  # the blocks' relative paths: examples/ to read, cache/ to write
    namespace: dict = {}
    exec(compile(python_block(), "docs/python.md", "exec"), namespace)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 4 and not captured.err  # the block's four prints, and not a line of the library's
    score = lines[0]
    assert re.fullmatch(r"test accuracy 0\.\d{3}, classes \['airplane', 'automobile', .*'truck'\]", score)
    assert float(lines[1]) > 0.3  # real ImageNet features: far above chance (0.1) on 100 images
    suspects = namespace["suspects"]
    shown = ast.literal_eval(lines[2])
    assert len(shown) == 5 and all((tmp_path / "examples" / "cifar10-mini" / i).is_file() for i in shown)
    assert all(suspects.predicted[row] != suspects.labels[row] for row in suspects.rows[:5])
    assert namespace["x_train"].shape == (300, 1280) and namespace["x_test"].shape == (100, 1280)
    assert namespace["vectors"].shape == (4, 1280) and np.isfinite(namespace["vectors"]).all()
    # the vectors are the cached features of the same files
    cached = dict(zip(namespace["cache"].load("test")[2], namespace["x_test"], strict=True))
    np.testing.assert_allclose(namespace["vectors"][0], cached["test/cat/0000.jpg"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(namespace["vector"][0], cached["test/dog/0000.jpg"], rtol=1e-4, atol=1e-4)
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 1  # FrozenFeatures keeps its own under cache/images/
    assert ast.literal_eval(lines[-1]) == namespace["search"].best_params_  # printed last
    assert namespace["search"].best_params_["features__pool"] in ("avg", "max")
    assert len(list((tmp_path / "cache" / "images").glob("*.h5"))) == 2  # one file per setting of the search

    capsys.readouterr()
    short: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), short)  # the README's ten lines, on the same cache
    assert short["x_train"].shape == (300, 1280) and short["vectors"].shape == (1, 1280)
    assert 0.3 < float(capsys.readouterr().out.splitlines()[-1]) <= 1
    np.testing.assert_allclose(short["vectors"][0], cached["test/cat/0000.jpg"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [python_block, readme_python_block])
def test_the_python_blocks_import_only_the_public_api(block):
    imported = [node for node in ast.walk(ast.parse(block())) if isinstance(node, ast.ImportFrom)]
    ours = [node for node in imported if node.module.split(".")[0] in ("extract", "classify", "pipelines")]
    assert ours and all(node.module in ("extract", "classify", "pipelines") for node in ours)
    import classify
    import extract
    import pipelines

    for node in ours:
        package = {"extract": extract, "classify": classify, "pipelines": pipelines}[node.module]
        assert all(alias.name in package.__all__ for alias in node.names)


def test_every_public_name_resolves():
    import classify
    import extract
    import pipelines

    for package in (extract, classify, pipelines):
        assert all(getattr(package, name) is not None for name in package.__all__)
    assert extract.__version__


def test_features_of_pil_images_of_any_mode_are_those_of_their_rgb_conversion():
    from PIL import Image

    from extract.backbones import create_backbone
    from extract.features import ExtractionSettings, Extractor

    rng = np.random.default_rng(0)
    rgba_pixels = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    gray_pixels = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    # by hand: transparency over white, grey in all three channels
    alpha = rgba_pixels[..., 3:] / 255.0
    over_white = np.round(rgba_pixels[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    gray_as_rgb = np.repeat(gray_pixels[..., None], 3, axis=2)
    extractor = Extractor(create_backbone("resnet18", weights="none", image_size=64), "avg", ExtractionSettings())
    features = extractor.image_features([Image.fromarray(rgba_pixels, "RGBA"), Image.fromarray(gray_pixels, "L")])
    expected = extractor.image_features([Image.fromarray(over_white), Image.fromarray(gray_as_rgb)])
    assert features.shape == (2, 512)
    np.testing.assert_array_equal(features[1], expected[1])
    # PIL's compositing rounds some pixels one level otherwise than the formula: features within that
    np.testing.assert_allclose(features[0], expected[0], rtol=1e-3, atol=1e-4)
    black = extractor.image_features([Image.fromarray(rgba_pixels[..., :3])])  # the alpha ignored: not the same
    assert not np.allclose(features[0], black[0], rtol=1e-3, atol=1e-4)


def test_features_of_image_files_are_those_of_the_images_a_batch_at_a_time(tmp_path):
    import pytest

    from extract.backbones import create_backbone
    from extract.datasets import BadImageError, load_image
    from extract.features import ExtractionSettings, Extractor

    paths = sorted((SAMPLE / "test" / "cat").glob("*.jpg"))[:5]
    extractor = Extractor(create_backbone("resnet18", weights="none", image_size=64), "avg",
                          ExtractionSettings(batch_size=2))
    features = extractor.image_features(paths)  # three batches, the last one short
    assert features.shape == (5, 512) and features.dtype == np.float32
    one_by_one = np.concatenate([extractor.image_features([load_image(p, p.name)]) for p in paths])
    np.testing.assert_allclose(features, one_by_one, rtol=1e-5, atol=1e-5)
    assert extractor.image_features([]).shape == (0, 512)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        extractor.image_features([paths[0], tmp_path / "broken.jpg"])
