"""A library call leaves the caller's process as it was: matplotlib's backend and figures, glibc's allocator."""

import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt


def test_training_and_reports_leave_matplotlibs_backend_and_figures_alone(lite_cache, tmp_path):
    from classify.train import train_head
    from pipelines.report import plot_validation_curves

    cache = shutil.copy(lite_cache, tmp_path / lite_cache.name)
    matplotlib.use("svg")  # a notebook's choice, not the library's default
    open_figure = plt.figure()
    try:
        result = train_head(cache, "logreg", "C=0.1", cv=2, n_jobs=1, log=lambda m: None)
        plot_validation_curves({"a": [{"epoch": 1, "val_accuracy": 0.5}]}, tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [open_figure.number]  # none of ours left open in pyplot
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert Path(result.confusion_png).read_bytes()[:4] == b"\x89PNG"
    finally:
        plt.close("all")
        matplotlib.use("Agg")


def test_an_extractor_leaves_the_allocator_alone(monkeypatch):
    """glibc's malloc thresholds are set through ctypes (extract.runtime.keep_freed_memory): only the CLIs do it."""
    import ctypes

    from extract.backbones import create_backbone
    from extract.features import ExtractionSettings, Extractor

    backbone = create_backbone("efficientnet_lite0", image_size=64)
    loaded = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: loaded.append(args))
    Extractor(backbone, "avg", ExtractionSettings(device="cpu", workers=0))
    assert loaded == []


def test_library_fine_tuning_and_comparison_draw_bars_only_when_asked(sample_dir, tmp_path, capsys):
    from pipelines.compare import compare
    from pipelines.finetune import FinetuneConfig

    config = FinetuneConfig(dataset=str(sample_dir), image_size=48, limit_per_class=4, epochs=1, batch_size=16,
                            workers=0)
    quiet = lambda message: None  # noqa: E731
    compare(config, ["frozen", "lp-ft"], str(tmp_path / "cache"), str(tmp_path / "quiet"), log=quiet)
    assert capsys.readouterr().err == ""
    compare(config, ["frozen", "lp-ft"], str(tmp_path / "cache2"), str(tmp_path / "shown"), log=quiet,
            progress=True)
    bars = capsys.readouterr().err
    for step in ("train:", "test:", "lp-ft epoch 1/1", "validation:", "logreg:"):  # extract, train, passes, search
        assert step in bars
