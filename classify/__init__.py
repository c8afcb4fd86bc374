"""scikit-learn heads trained on cached features: grid search, honest test metrics, saved models.

The public API (anything else may change):

    from classify import train_head, load_model, predict_images
    result = train_head(cache_path, "logreg")                 # python -m classify logreg, from Python
    model, metadata = load_model(result.model_file)           # the fitted Pipeline and its record
    for path, label, probability in predict_images(result.model_file, ["photo.jpg"]): ...

- `train_head(cache_path, head, grid_text=None, cv=3, ...)` -> `TrainResult` (test metrics, `.model_file`); a list of
  cache entries of the same images is an ensemble (their features side by side).
- `load_model(path)` -> (scikit-learn Pipeline, metadata); `predict_images(model_path, paths)` -> `Prediction`s.
- `find_suspects(cache_path)` -> `Suspects`; `find_duplicates(cache_path)` -> `Duplicates`.
- `HEADS`, `DEFAULT_GRIDS`: the heads and their default sweeps.

Importing `classify` does not import torch; `predict_images` does, as it runs the backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from extract.lazy import lazy_exports

_HOME = {
    "train_head": "classify.train",
    "TrainResult": "classify.train",
    "load_model": "classify.models",
    "predict_images": "classify.predict",
    "Prediction": "classify.predict",
    "find_suspects": "classify.suspects",
    "Suspects": "classify.suspects",
    "find_duplicates": "classify.duplicates",
    "Duplicates": "classify.duplicates",
    "HEADS": "classify.heads",
    "DEFAULT_GRIDS": "classify.heads",
}
__all__ = ["train_head", "TrainResult", "load_model", "predict_images", "Prediction", "find_suspects", "Suspects",
           "find_duplicates", "Duplicates", "HEADS", "DEFAULT_GRIDS"]

if TYPE_CHECKING:
    from classify.duplicates import Duplicates, find_duplicates
    from classify.heads import DEFAULT_GRIDS, HEADS
    from classify.models import load_model
    from classify.predict import Prediction, predict_images
    from classify.suspects import Suspects, find_suspects
    from classify.train import TrainResult, train_head


__getattr__, __dir__ = lazy_exports(__name__, _HOME, __all__)
