"""FrozenFeatures, the scikit-learn transformer: in Pipelines and searches, computed once per setting and image."""

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from extract import BadImageError, FrozenFeatures
from extract.features import Extractor

CLASSES = ("airplane", "automobile", "cat", "ship")


@pytest.fixture(scope="module")
def images(sample_dir):
    paths = [str(sample_dir / "train" / name / f"{i:04d}.jpg") for name in CLASSES for i in range(6)]
    return paths, np.repeat(np.arange(len(CLASSES)), 6)


@pytest.fixture
def counted(monkeypatch):
    """How many images the network ran on, in this process."""
    seen = []
    original = Extractor.image_features

    def counting(self, batch):
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Extractor, "image_features", counting)
    return seen


def _search(cache_dir, layers=("stage4", "penultimate"), **options):
    pipeline = Pipeline([("features", FrozenFeatures(image_size=64, cache_dir=cache_dir)), ("scale", StandardScaler()),
                         ("clf", LogisticRegression(max_iter=500))])
    grid = {"features__pool": ["avg", "max"], "features__layers": list(layers), "clf__C": [0.01, 1.0]}
    return GridSearchCV(pipeline, grid, cv=3, **options)


def test_a_search_runs_the_network_once_per_setting_and_image_and_a_rerun_not_at_all(images, counted, tmp_path):
    paths, labels = images
    search = _search(str(tmp_path)).fit(paths, labels)
    settings = 4  # pool x layers; C is the head's
    assert sum(counted) == settings * len(paths)
    best = search.best_estimator_.named_steps["features"]
    assert best.transform(paths[:1]).shape == (1, best.n_features_out_)
    counted.clear()
    again = _search(str(tmp_path)).fit(paths, labels)
    assert sum(counted) == 0 and again.best_params_ == search.best_params_
    np.testing.assert_allclose(again.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])


def test_parallel_workers_share_the_cache_without_corrupting_it(images, tmp_path):
    """Two worker processes of one search read and append the same files: each ends with every image once, and
    the stored features are those of the network (to float rounding: the workers run other thread counts)."""
    import h5py

    paths, labels = images
    _search(str(tmp_path), layers=["penultimate"], n_jobs=2).fit(paths, labels)
    stores = sorted((tmp_path / "images").glob("*.h5"))
    assert len(stores) == 2  # avg and max
    for store, pool in zip(stores, ("avg", "max"), strict=True):
        with h5py.File(store, "r") as file:
            keys, stored = list(file["keys"].asstr()[...]), file["features"][...]
        assert len(keys) == len(set(keys)) == len(paths)
        fresh = FrozenFeatures(image_size=64, pool=pool).fit(paths)
        order = [keys.index(next(k for k in keys if k.startswith(f"file:{path}:"))) for path in paths]
        np.testing.assert_allclose(stored[order], fresh.transform(paths), rtol=1e-4, atol=1e-4)


def test_it_composes_with_cross_val_score_and_halving_search(images):
    paths, labels = images
    pipeline = Pipeline([("features", FrozenFeatures(image_size=64)), ("clf", LogisticRegression(max_iter=500))])
    assert cross_val_score(pipeline, paths, labels, cv=3).mean() > 0.25  # 4 classes: chance is 0.25
    search = HalvingGridSearchCV(pipeline, {"features__pool": ["avg", "max"]}, cv=3, min_resources=12, random_state=0)
    search.fit(paths, labels)
    assert list(search.n_candidates_) == [2] and list(search.n_resources_) == [12]  # 24 images: one round
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_ == search.cv_results_["params"][int(np.argmax(scores))]
    # a permuted-label control: the same search on shuffled labels scores lower than on the true ones
    shuffled = np.random.default_rng(0).permutation(labels)
    control = HalvingGridSearchCV(pipeline, {"features__pool": ["avg", "max"]}, cv=3, min_resources=12,
                                  random_state=0).fit(paths, shuffled)
    assert search.best_score_ > control.best_score_


def test_clone_pickle_and_joblib_keep_the_parameters_and_leave_the_network_behind(images, tmp_path):
    paths, _ = images
    features = FrozenFeatures(image_size=64, pool="max", layers="stage3,penultimate")
    with pytest.raises(NotFittedError):
        features.transform(paths)
    assert clone(features).get_params() == features.get_params()
    assert features.set_params(pool="avg").pool == "avg" and "pool" in features.get_params()
    expected = features.fit(paths).transform(paths[:3])
    assert expected.dtype == np.float32 and expected.shape == (3, features.n_features_out_)
    assert len(features.get_feature_names_out()) == features.n_features_out_
    assert features.get_feature_names_out()[0] == "stage3_0"
    blob = pickle.dumps(features)
    assert len(blob) < 100_000  # the parameters and the layout, no weights
    joblib.dump(features, tmp_path / "features.joblib")
    for loaded in (pickle.loads(blob), joblib.load(tmp_path / "features.joblib")):
        np.testing.assert_allclose(loaded.transform(paths[:3]), expected, rtol=1e-5, atol=1e-5)


def test_paths_pil_images_and_arrays_of_one_image_give_its_features(images, tmp_path):
    paths, _ = images
    features = FrozenFeatures(image_size=64, cache_dir=str(tmp_path)).fit(paths)
    image = Image.open(paths[0]).convert("RGB")
    rows = features.transform([paths[0], image, np.asarray(image)])
    np.testing.assert_allclose(rows[1], rows[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows[2], rows[1])  # the same pixels: the same key
    assert features.transform(np.stack([np.asarray(image)] * 2)).shape == (2, 1280)
    assert features.transform([]).shape == (0, 1280)


def test_bad_input_is_an_exception_naming_what_is_wrong(images, tmp_path):
    paths, _ = images
    features = FrozenFeatures(image_size=64).fit(paths)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        features.transform([paths[0], str(tmp_path / "broken.jpg")])
    with pytest.raises(BadImageError, match="missing.jpg"):
        features.transform([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="sequence of images"):
        features.transform("photo.jpg")
    with pytest.raises(ValueError, match="uint8"):
        features.transform([np.zeros((8, 8, 3), dtype=np.float32)])


def test_an_ensemble_of_backbones_is_a_feature_union_of_their_features(images):
    from sklearn.pipeline import make_union

    paths, _ = images
    members = [FrozenFeatures("efficientnet_lite0", image_size=64), FrozenFeatures("efficientnet_lite1", image_size=64)]
    joined = make_union(*members).fit_transform(paths[:3])
    alone = [clone(member).fit_transform(paths[:3]) for member in members]
    assert joined.shape == (3, 1280 + 1280)
    np.testing.assert_allclose(joined, np.hstack(alone), rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two networks, not one twice


def test_parameters_changed_after_fit_are_refused_not_written_under_the_fitted_key(images, tmp_path):
    from extract.image_store import ImageFeatureStore

    paths, _ = images
    fitted = FrozenFeatures(image_size=64, cache_dir=tmp_path).fit(paths[:2])
    average = fitted.transform(paths[:1])
    restored = pickle.loads(pickle.dumps(fitted)).set_params(pool="max")  # rebuilt from today's parameters
    with pytest.raises(ValueError, match="pool: 'avg' -> 'max'"):
        restored.transform(paths[1:2])
    stored = ImageFeatureStore(tmp_path, fitted.identity_, fitted.n_features_out_).read(
        [f"file:{Path(p).resolve()}:{Path(p).stat().st_size}:{Path(p).stat().st_mtime_ns}" for p in paths[:2]])
    assert len(stored) == 1  # nothing was added under the average-pooled key
    np.testing.assert_array_equal(next(iter(stored.values())), average[0])
    assert restored.fit(paths[:1]).transform(paths[1:2]).shape == (1, 1280)  # refitted: fine


def test_free_networks_lets_the_kept_networks_go_once_no_estimator_holds_them(images):
    import gc
    import weakref

    paths, _ = images
    features = FrozenFeatures(image_size=48, pool="max").fit(paths[:2])
    network = weakref.ref(features._network())
    del features
    gc.collect()
    assert network() is not None  # kept for the next fit of the same setting
    assert FrozenFeatures(image_size=48, pool="max").fit(paths[:2])._network() is network()
    FrozenFeatures.free_networks()
    gc.collect()
    assert network() is None
