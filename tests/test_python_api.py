"""The README's "From Python" block, run as it stands, so that what it shows stays true."""

import ast
import re
import shutil

import numpy as np

from tests.conftest import REPO, SAMPLE


def readme_python_block() -> str:
    section = (REPO / "README.md").read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_python_block_runs_and_gives_what_it_says(tmp_path, monkeypatch, capsys):
    shutil.copytree(SAMPLE, tmp_path / "examples" / "cifar10-mini")
    monkeypatch.chdir(tmp_path)  # the block's relative paths: examples/ to read, cache/ to write
    namespace: dict = {}
    exec(compile(readme_python_block(), "README.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    (score,) = [line for line in lines if line.startswith("test accuracy")]  # the library logs its steps too
    assert re.fullmatch(r"test accuracy 0\.\d{3}, classes \['airplane', 'automobile', .*'truck'\]", score)
    start_of_suspects = next(i for i, line in enumerate(lines) if line.startswith("suspects: "))
    assert float(lines[start_of_suspects - 1]) > 0.3  # real ImageNet features: far above chance (0.1) on 100 images
    suspects = namespace["suspects"]
    shown = ast.literal_eval(next(line for line in lines[start_of_suspects:] if line.startswith("['")))
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


def test_the_readme_python_block_imports_only_the_public_api():
    imported = [node for node in ast.walk(ast.parse(readme_python_block())) if isinstance(node, ast.ImportFrom)]
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
    from extract.datasets import to_rgb
    from extract.features import ExtractionSettings, Extractor

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L")
    extractor = Extractor(create_backbone("resnet18", weights="none", image_size=64), "avg", ExtractionSettings())
    features = extractor.image_features([rgba, gray])
    assert features.shape == (2, 512)
    np.testing.assert_array_equal(features, extractor.image_features([to_rgb(rgba), to_rgb(gray)]))


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
